-- migrate:up
-- Operating settings of the queue: how long finished work is kept, and where
-- the runner's HTTP endpoint is when Vault does not say. One row, read by the
-- retention job, the dispatch job and the insert trigger (db/functions/ops_*.sql).
--
-- The endpoint's URL and key belong in Supabase Vault (secrets named by
-- vault_url_secret and vault_key_secret); runner_url and runner_key are the
-- fallback for a PostgreSQL without Vault. Neither is ever written by a
-- migration: an operator sets them on the live database.
create table ai_queue.ops_settings (
  id boolean primary key default true constraint ops_settings_single_row check (id),

  -- Retention: null keeps that kind of row forever.
  finished_task_retention interval default interval '30 days'
    constraint ops_settings_task_retention_min
    check (finished_task_retention >= interval '1 hour'),
  build_log_retention interval default interval '30 days'
    constraint ops_settings_log_retention_min
    check (build_log_retention >= interval '1 hour'),
  -- pg_cron logs every run and never deletes the log: a job every 5 seconds
  -- writes 17280 rows a day.
  cron_history_retention interval default interval '3 days'
    constraint ops_settings_cron_retention_min
    check (cron_history_retention >= interval '10 minutes'),
  -- Rows deleted per table per run, so one run never holds locks for long;
  -- an hourly job at 20000 keeps up with 480000 finished tasks a day.
  retention_batch_size integer not null default 20000
    constraint ops_settings_batch_size_range
    check (retention_batch_size between 100 and 1000000),

  -- Waking the runner over HTTP (needs pg_net).
  dispatch_enabled boolean not null default true,
  dispatch_timeout_ms integer not null default 5000
    constraint ops_settings_timeout_range
    check (dispatch_timeout_ms between 100 and 60000),
  vault_url_secret text not null default 'process_ai_tasks_url',
  vault_key_secret text not null default 'process_ai_tasks_key',
  vault_runner_secret text not null default 'process_ai_tasks_runner_secret',
  runner_url text constraint ops_settings_runner_url_http check (runner_url ~ '^https?://'),
  runner_key text,
  runner_secret text,

  updated_at timestamptz not null default now()
);
comment on table ai_queue.ops_settings is
  'One row of operating settings: retention ages and the runner endpoint fallback.';

insert into ai_queue.ops_settings (id) values (true) on conflict (id) do nothing;

-- Keys live here when Vault is absent, so only the service may read or change them.
revoke all on ai_queue.ops_settings from public, anon, authenticated;
grant select, update on ai_queue.ops_settings to service_role;

-- migrate:down
do $$
begin
  if exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.unschedule(j.jobid) from cron.job j
    where j.jobname in ('ai-tasks-retention', 'ai-tasks-dispatch');
  end if;
end
$$;
drop table if exists ai_queue.ops_settings;
