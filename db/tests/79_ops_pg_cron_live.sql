-- The same setup on the real pg_cron. pg_cron can only be created in the
-- database named by cron.database_name (postgres on the local cluster), so
-- in any other database this file skips. Run it there with:
--   scripts/migrate.sh postgres   # applies the migrations and schedules the jobs
--   pg_prove -d postgres -h 127.0.0.1 -p 54329 -U postgres db/tests/79_ops_pg_cron_live.sql
-- Everything it changes is rolled back.
begin;
create extension if not exists pgtap;
select plan(7);

create function pg_temp.live_checks() returns setof text
language plpgsql as $$
declare
  cadence text;
begin
  if not exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    return query select skip('pg_cron is installed only in database postgres', 7);
    return;
  end if;

  return query select is(ai_queue.setup_schedules(),
    array['ai-tasks-retention 17 * * * *']::text[],
    'the installed pg_cron (1.4) gets the retention job; no pg_net, no dispatch job');
  return query select row_eq(
    $q$select schedule, command, active from cron.job where jobname = 'ai-tasks-retention'$q$,
    row('17 * * * *'::text, 'select public.purge_ai_queue_history()'::text, true),
    'cron.job holds the active retention job');

  -- A stand-in net.http_post makes the dispatch job appear, on the real pg_cron.
  create schema net;
  create function net.http_post(
    url text, body jsonb default '{}', params jsonb default '{}',
    headers jsonb default '{}', timeout_milliseconds integer default 5000
  ) returns bigint language sql as $f$ select 1::bigint $f$;
  select case when string_to_array(substring(e.extversion from '^\d+\.\d+'), '.')::int[]
                   >= array[1, 5] then '5 seconds' else '* * * * *' end
  into cadence
  from pg_catalog.pg_extension e where e.extname = 'pg_cron';
  return query select is(ai_queue.setup_schedules(),
    array['ai-tasks-retention 17 * * * *', 'ai-tasks-dispatch ' || cadence],
    'with pg_net the dispatch job is added at the cadence the installed version allows');
  return query select is(
    (select schedule from cron.job where jobname = 'ai-tasks-dispatch'), cadence,
    'cron.job holds the dispatch job');
  perform ai_queue.setup_schedules();
  return query select is(
    (select count(*)::integer from cron.job where jobname like 'ai-tasks-%'
       and jobname in ('ai-tasks-retention', 'ai-tasks-dispatch')),
    2, 'a second run leaves one job of each name');

  -- pg_cron's run log is trimmed by the retention job.
  insert into cron.job_run_details (jobid, runid, job_pid, database, username, command,
                                    status, return_message, start_time, end_time)
  select j.jobid, nextval('cron.runid_seq'), 0, 'postgres', 'postgres', j.command,
         'succeeded', '1 row', now() - age, now() - age + interval '1 second'
  from cron.job j, (values (interval '10 days'), (interval '1 hour')) a(age)
  where j.jobname = 'ai-tasks-retention';
  return query select cmp_ok(
    (public.purge_ai_queue_history() ->> 'cron_runs')::integer, '>=', 1,
    'the retention job deletes pg_cron runs older than cron_history_retention');
  return query select ok(exists (
      select from cron.job_run_details d join cron.job j using (jobid)
      where j.jobname = 'ai-tasks-retention' and d.start_time = now() - interval '1 hour'),
    'and keeps the recent ones');
end;
$$;

select * from pg_temp.live_checks();
select * from finish();
rollback;
