-- fail_ai_task: record a failed attempt and decide what comes next.
--
-- The error joins the task's history; then the task is queued again after a
-- backoff (or after exactly retry_after_seconds, as a provider's Retry-After
-- asks), or marked failed when the error is not retryable or the attempts are
-- used up. A partial streamed reply is removed. Returns the new status.
create or replace function public.fail_ai_task(
  task_id uuid,
  attempt integer,
  error text,
  retryable boolean default true,
  retry_after_seconds integer default null
) returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
  final boolean;
  delay interval;
  next_status text;
  error_text text := left(btrim(error), 4000);
begin
  perform ai_queue.check_task_attempt(task_id, attempt);
  if error_text is null or error_text = '' then
    perform ai_queue.invalid_argument('error', 'must describe what went wrong',
      quote_literal(error));
  end if;
  if retryable is null then
    perform ai_queue.invalid_argument('retryable', 'must be true or false', null);
  end if;
  if retry_after_seconds is not null and retry_after_seconds not between 0 and 86400 then
    perform ai_queue.invalid_argument('retry_after_seconds', 'must be between 0 and 86400',
      retry_after_seconds::text);
  end if;

  task := ai_queue.lock_task(task_id);

  -- The same holder repeating a failure it already recorded.
  if task.status in ('queued', 'failed') and task.attempts = attempt
     and (task.errors -> -1 ->> 'attempt')::integer = attempt then
    return task.status;
  end if;
  if task.status <> 'running' or task.attempts <> attempt then
    perform ai_queue.raise_not_held(task, attempt);
  end if;

  final := not retryable or task.attempts >= task.max_attempts;
  next_status := case when final then 'failed' else 'queued' end;
  delay := case
    when final then interval '0'
    when retry_after_seconds is not null then make_interval(secs => retry_after_seconds)
    else ai_queue.retry_delay(task.attempts)
  end;

  update public.ai_tasks t set
    status = next_status,
    error = error_text,
    errors = t.errors || jsonb_build_object(
      'attempt', attempt, 'error', error_text, 'retryable', retryable,
      'worker', t.locked_by, 'at', now()),
    run_at = now() + delay,
    finished_at = case when final then now() end,
    locked_by = null,
    locked_until = null,
    updated_at = now()
  where t.id = task.id;

  delete from public.chat_messages m where m.task_id = task.id and m.streaming;

  perform ai_queue.log(task.project_id, task.id,
    case when final then 'error' else 'warning' end,
    case
      when final and not retryable then format('task failed: %s', error_text)
      when final then format('task failed after %s attempts: %s', attempt, error_text)
      else format('attempt %s failed, retrying in %s s: %s',
                  attempt, round(extract(epoch from delay)), error_text)
    end,
    jsonb_build_object('event', case when final then 'failed' else 'retry_scheduled' end,
                       'worker', task.locked_by, 'attempt', attempt, 'retryable', retryable,
                       'retry_in_seconds', round(extract(epoch from delay), 3)));
  return next_status;
end;
$$;

comment on function public.fail_ai_task(uuid, integer, text, boolean, integer) is
  'Record a failed attempt; requeue with backoff (or Retry-After) or fail. Returns the new status.';
revoke all on function public.fail_ai_task(uuid, integer, text, boolean, integer)
  from public, anon, authenticated;
grant execute on function public.fail_ai_task(uuid, integer, text, boolean, integer)
  to service_role;
