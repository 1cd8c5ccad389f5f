-- What a project's owner may do to its tasks besides queueing them.

-- cancel_ai_task: stop a queued or running task. A worker holding it learns
-- on its next lease extension or write and drops its result. Cancelling a
-- cancelled task is a no-op; a finished one cannot be cancelled.
create or replace function public.cancel_ai_task(task_id uuid) returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
begin
  if task_id is null then
    perform ai_queue.invalid_argument('task_id', 'is required', null);
  end if;

  task := ai_queue.lock_owned_task(task_id);

  if task.status = 'cancelled' then
    return task.status;
  end if;
  if task.status not in ('queued', 'running') then
    raise exception 'task % is %: only queued or running tasks can be cancelled',
      task_id, task.status
      using errcode = 'AQ003', hint = 'Use retry_ai_task to run a failed task again.';
  end if;

  update public.ai_tasks t set
    status = 'cancelled',
    finished_at = now(),
    locked_by = null,
    locked_until = null,
    updated_at = now()
  where t.id = task.id;
  delete from public.chat_messages m where m.task_id = task.id and m.streaming;
  perform ai_queue.log(task.project_id, task.id, 'info',
    format('task cancelled while %s', task.status),
    jsonb_build_object('event', 'cancelled', 'previous_status', task.status,
                       'by', coalesce(auth.uid()::text, 'service')));
  return 'cancelled';
end;
$$;

-- retry_ai_task: queue a failed or cancelled task again with extra_attempts
-- fresh attempts. Its error history is kept, and its attempt count keeps
-- growing rather than restarting, so a worker still holding an old attempt
-- can never pass for the new one.
create or replace function public.retry_ai_task(
  task_id uuid,
  extra_attempts integer default 3
) returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
begin
  if task_id is null then
    perform ai_queue.invalid_argument('task_id', 'is required', null);
  end if;

  if extra_attempts is null or extra_attempts not between 1 and 25 then
    perform ai_queue.invalid_argument('extra_attempts', 'must be between 1 and 25',
      extra_attempts::text);
  end if;

  task := ai_queue.lock_owned_task(task_id);

  if task.status not in ('failed', 'cancelled') then
    raise exception 'task % is %: only failed or cancelled tasks can be retried',
      task_id, task.status
      using errcode = 'AQ003';
  end if;

  -- While this task was finished, a new one may have been queued with its
  -- idempotency key; the retried task then gives the key up instead of
  -- failing on the unique index. Two retries racing for one key can still
  -- meet that index and get a plain 23505.
  update public.ai_tasks t set
    status = 'queued',
    max_attempts = t.attempts + extra_attempts,
    idempotency_key = case when exists (
        select 1 from public.ai_tasks o
        where o.project_id = t.project_id and o.idempotency_key = t.idempotency_key
          and o.status in ('queued', 'running') and o.id <> t.id)
      then null else t.idempotency_key end,
    error = null,
    run_at = now(),
    started_at = null,
    finished_at = null,
    updated_at = now()
  where t.id = task.id;
  perform ai_queue.log(task.project_id, task.id, 'info',
    format('task queued again after it %s', task.status),
    jsonb_build_object('event', 'retried', 'previous_status', task.status,
                       'by', coalesce(auth.uid()::text, 'service')));
  perform pg_notify('ai_tasks', 'queued');
  return 'queued';
end;
$$;

revoke all on function public.cancel_ai_task(uuid), public.retry_ai_task(uuid, integer)
  from public, anon;
grant execute on function public.cancel_ai_task(uuid), public.retry_ai_task(uuid, integer)
  to authenticated, service_role;
