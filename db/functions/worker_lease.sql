-- The lease helpers a worker calls while it holds a task.

-- extend_ai_task_lease: push the lease out while a long model call runs.
-- Returns false once the attempt no longer holds the task (cancelled, taken
-- over), which is the runner's signal to abort the call.
create or replace function public.extend_ai_task_lease(
  task_id uuid,
  attempt integer,
  lease_seconds integer default 300
) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
begin
  perform ai_queue.check_task_attempt(task_id, attempt);
  if lease_seconds is null or lease_seconds not between 5 and 3600 then
    perform ai_queue.invalid_argument('lease_seconds', 'must be between 5 and 3600',
      lease_seconds::text);
  end if;

  update public.ai_tasks t set
    locked_until = now() + make_interval(secs => lease_seconds),
    updated_at = now()
  where t.id = extend_ai_task_lease.task_id
    and t.status = 'running'
    and t.attempts = extend_ai_task_lease.attempt;
  return found;
end;
$$;

-- release_ai_task: give a held task back without spending its attempt, as a
-- worker does on shutdown. Returns false when the attempt no longer held it.
-- The attempt is given back by raising max_attempts, not by lowering
-- attempts: attempts is the fencing token, and handing the same number to the
-- next claim would let a repeated release (or a late completion) from this
-- worker act on the next worker's attempt.
create or replace function public.release_ai_task(
  task_id uuid,
  attempt integer
) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
begin
  perform ai_queue.check_task_attempt(task_id, attempt);

  -- The row as its holder left it: the log names that worker.
  select * into task from public.ai_tasks t
  where t.id = release_ai_task.task_id
    and t.status = 'running'
    and t.attempts = release_ai_task.attempt
  for update;
  if not found then
    return false;
  end if;

  update public.ai_tasks t set
    status = 'queued',
    max_attempts = t.max_attempts + 1,
    run_at = now(),
    locked_by = null,
    locked_until = null,
    updated_at = now()
  where t.id = task.id;

  delete from public.chat_messages m where m.task_id = task.id and m.streaming;
  perform ai_queue.log(task.project_id, task.id, 'info',
    format('task released by %s; attempt %s was not spent', task.locked_by, attempt),
    jsonb_build_object('event', 'released', 'worker', task.locked_by, 'attempt', attempt));
  perform pg_notify('ai_tasks', 'queued');
  return true;
end;
$$;

-- stream_ai_task_reply: show a reply as it is generated. Writes the text so
-- far into the task's assistant message (created on the first call, marked
-- streaming until complete_ai_task), so Realtime subscribers watch it grow.
-- Returns false once the attempt no longer holds the task.
create or replace function public.stream_ai_task_reply(
  task_id uuid,
  attempt integer,
  content text
) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
begin
  perform ai_queue.check_task_attempt(task_id, attempt);
  if content is null or length(content) > 200000 then
    perform ai_queue.invalid_argument('content', 'must be text of at most 200000 characters',
      case when content is null then null else length(content) || ' characters' end);
  end if;

  select * into task from public.ai_tasks t
  where t.id = stream_ai_task_reply.task_id
    and t.status = 'running' and t.attempts = stream_ai_task_reply.attempt
  for share;
  if not found then
    return false;
  end if;

  insert into public.chat_messages (project_id, role, content, task_id, streaming, metadata)
  values (task.project_id, 'assistant', content, task.id, true,
          jsonb_build_object('streaming', true))
  on conflict (task_id) where role = 'assistant'
  do update set content = excluded.content, updated_at = now()
  where public.chat_messages.streaming;
  return true;
end;
$$;

-- reap_expired_ai_tasks: the lease reaper pg_cron runs every minute. Claims
-- reap too; this keeps expired tasks moving when no worker is claiming.
create or replace function public.reap_expired_ai_tasks() returns integer
language sql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
  select ai_queue.reap_expired_leases(10000)
$$;

revoke all on function
  public.extend_ai_task_lease(uuid, integer, integer),
  public.release_ai_task(uuid, integer),
  public.stream_ai_task_reply(uuid, integer, text),
  public.reap_expired_ai_tasks()
from public, anon, authenticated;
grant execute on function
  public.extend_ai_task_lease(uuid, integer, integer),
  public.release_ai_task(uuid, integer),
  public.stream_ai_task_reply(uuid, integer, text),
  public.reap_expired_ai_tasks()
to service_role;
