-- purge_ai_queue_history: the retention job pg_cron runs hourly. Deletes, up
-- to retention_batch_size rows each, finished tasks (completed, failed,
-- cancelled) and build logs older than the ages in ai_queue.ops_settings, and
-- pg_cron's own run log, which pg_cron never trims. Chat messages stay: they
-- are the conversation, and a deleted task only clears their task_id.
-- Returns how many rows of each kind went.
create or replace function public.purge_ai_queue_history() returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  settings ai_queue.ops_settings;
  tasks_deleted integer := 0;
  logs_deleted integer := 0;
  cron_runs_deleted integer := 0;
begin
  select * into settings from ai_queue.ops_settings s where s.id;
  if not found then
    insert into ai_queue.ops_settings (id) values (true) returning * into settings;
  end if;

  -- Oldest first, SKIP LOCKED so that a task an operator is retrying right
  -- now is left for the next run rather than waited for.
  if settings.finished_task_retention is not null then
    with doomed as (
      select t.id from public.ai_tasks t
      where t.finished_at < now() - settings.finished_task_retention
        and t.status in ('completed', 'failed', 'cancelled')
      order by t.finished_at
      limit settings.retention_batch_size
      for update skip locked
    )
    delete from public.ai_tasks t using doomed where t.id = doomed.id;
    get diagnostics tasks_deleted = row_count;
  end if;

  if settings.build_log_retention is not null then
    with doomed as (
      select l.id from public.build_logs l
      where l.created_at < now() - settings.build_log_retention
      order by l.created_at
      limit settings.retention_batch_size
    )
    delete from public.build_logs l using doomed where l.id = doomed.id;
    get diagnostics logs_deleted = row_count;
  end if;

  -- Dynamic, because the cron schema exists only where pg_cron is installed.
  -- runid grows with start_time, so the oldest runs are read first.
  if settings.cron_history_retention is not null
     and to_regclass('cron.job_run_details') is not null then
    execute 'delete from cron.job_run_details d where d.runid in (
               select r.runid from cron.job_run_details r
               where r.start_time < now() - $1
               order by r.runid limit $2)'
      using settings.cron_history_retention, settings.retention_batch_size;
    get diagnostics cron_runs_deleted = row_count;
  end if;

  return jsonb_build_object('tasks', tasks_deleted, 'build_logs', logs_deleted,
                            'cron_runs', cron_runs_deleted);
end;
$$;

comment on function public.purge_ai_queue_history() is
  'Delete finished tasks, build logs and pg_cron run history older than the ages in '
  'ai_queue.ops_settings; returns {tasks, build_logs, cron_runs} deleted.';
revoke all on function public.purge_ai_queue_history() from public, anon, authenticated;
grant execute on function public.purge_ai_queue_history() to service_role;
