-- snooze_ai_task: the provider said "too many requests"; try again later.
--
-- The held task goes back to the queue after retry_after_seconds (the
-- provider's Retry-After, or ai_queue_settings.snooze_default_seconds when it
-- gave none) with its attempt given back (max_attempts grows by one), since
-- the model never answered. The model's limit row learns the wait, so claims
-- hand out no task of that model until it has passed. A task may be snoozed
-- ai_queue_settings.max_snoozes times; the next rate-limit answer counts as
-- a failure and takes the normal fail_ai_task path (an attempt spent,
-- backoff, or failed when none is left). Fenced like fail_ai_task: AQ001
-- when the attempt no longer holds the task. Returns the new status: queued,
-- or what fail_ai_task returned.
create or replace function public.snooze_ai_task(
  task_id uuid,
  attempt integer,
  retry_after_seconds integer default null,
  reason text default 'rate limited'
) returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
  settings public.ai_queue_settings;
  delay interval;
  task_model text;
  reason_text text := left(btrim(reason), 4000);
begin
  perform ai_queue.check_task_attempt(task_id, attempt);
  if retry_after_seconds is not null and retry_after_seconds not between 0 and 86400 then
    perform ai_queue.invalid_argument('retry_after_seconds', 'must be between 0 and 86400',
      retry_after_seconds::text, 'Pass null to wait the default snooze delay.');
  end if;
  if reason_text is null or reason_text = '' then
    perform ai_queue.invalid_argument('reason', 'must describe the provider''s answer',
      quote_literal(reason));
  end if;

  task := ai_queue.lock_task(task_id);
  if task.status <> 'running' or task.attempts <> attempt then
    perform ai_queue.raise_not_held(task, attempt);
  end if;

  settings := ai_queue.settings();
  delay := make_interval(secs => coalesce(retry_after_seconds, settings.snooze_default_seconds));
  task_model := coalesce(task.model, settings.default_model);

  -- The limit applies to the model, not to this task: every claim of the model
  -- waits, so other workers stop collecting 429s too.
  perform ai_queue.pause_model(task_model, now() + delay);

  if task.snoozes >= settings.max_snoozes then
    return public.fail_ai_task(task.id, attempt,
      format('%s (after %s snoozes, the most a task may take)', reason_text, task.snoozes),
      true, retry_after_seconds);
  end if;

  -- The attempt is given back as release_ai_task does, by raising
  -- max_attempts: attempts stays the fencing token and keeps growing, so a
  -- repeated snooze from this worker cannot touch the next claim's attempt.
  update public.ai_tasks t set
    status = 'queued',
    max_attempts = t.max_attempts + 1,
    snoozes = t.snoozes + 1,
    run_at = now() + delay,
    locked_by = null,
    locked_until = null,
    updated_at = now()
  where t.id = task.id;

  delete from public.chat_messages m where m.task_id = task.id and m.streaming;

  perform ai_queue.log(task.project_id, task.id, 'warning',
    format('attempt %s snoozed for %s s, not spent: %s',
           attempt, round(extract(epoch from delay)), reason_text),
    jsonb_build_object('event', 'snoozed', 'worker', task.locked_by, 'attempt', attempt,
                       'model', task_model,
                       'snoozes', task.snoozes + 1,
                       'retry_in_seconds', round(extract(epoch from delay), 3)));
  return 'queued';
end;
$$;

comment on function public.snooze_ai_task(uuid, integer, integer, text) is
  'Put a held task back after a provider rate limit without spending its attempt; '
  'pauses the model for the wait. Returns the new status.';
revoke all on function public.snooze_ai_task(uuid, integer, integer, text)
  from public, anon, authenticated;
grant execute on function public.snooze_ai_task(uuid, integer, integer, text)
  to service_role;
