-- migrate:up
-- The service role tunes retention and dispatch but neither reads nor moves
-- the runner endpoint: runner_url, runner_key and runner_secret (and the
-- Vault names that point at them) are the operator's, set through
-- ai_queue.set_runner_endpoint as postgres. Otherwise a leaked service key
-- could read the runner key, or send every wake-up call elsewhere.
revoke all on ai_queue.ops_settings from service_role;
grant select (id, finished_task_retention, build_log_retention, cron_history_retention,
              retention_batch_size, dispatch_enabled, dispatch_timeout_ms, updated_at)
  on ai_queue.ops_settings to service_role;
grant update (finished_task_retention, build_log_retention, cron_history_retention,
              retention_batch_size, dispatch_enabled, dispatch_timeout_ms, updated_at)
  on ai_queue.ops_settings to service_role;

-- migrate:down
revoke all on ai_queue.ops_settings from service_role;
grant select, update on ai_queue.ops_settings to service_role;
