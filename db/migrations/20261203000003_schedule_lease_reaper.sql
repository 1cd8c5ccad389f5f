-- migrate:up
-- Every minute, pg_cron hands back tasks whose worker stopped renewing its
-- lease. Where pg_cron cannot be had (not preloaded, or this database is not
-- cron.database_name) the schedule is skipped with a notice: claims reap
-- expired leases themselves, so the queue stays correct, only slower to
-- notice a dead worker while nobody claims.
do $$
begin
  if not exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    begin
      create extension pg_cron;
    exception when others then
      raise notice 'pg_cron unavailable (%); lease reaper not scheduled', sqlerrm;
      return;
    end;
  end if;

  -- Scheduling under an existing name replaces that job, so a re-run is safe.
  perform cron.schedule('ai-tasks-reap-expired-leases', '* * * * *',
                        'select public.reap_expired_ai_tasks()');
end
$$;

-- migrate:down
do $$
begin
  if exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.unschedule(jobid) from cron.job
    where jobname = 'ai-tasks-reap-expired-leases';
  end if;
end
$$;
