-- Internal helpers shared by the public queue functions. Schema ai_queue is
-- not exposed through the API and none of these is executable by API roles.
--
-- Every function of the queue sets `search_path = pg_catalog, pg_temp`, not
-- an empty one: with an empty path PostgreSQL still searches the caller's
-- temporary schema first for type names, so a caller could shadow `text` or
-- `jsonb` with a temporary type plus a cast and have a SECURITY DEFINER
-- function run the cast's code with the owner's rights. Listing pg_temp last
-- leaves it nothing to shadow; objects are still schema-qualified.
--
-- The functions a worker or an enqueuer calls at volume also set
-- `enable_seqscan = off`. ai_tasks swings from empty to hundreds of thousands
-- of rows and back; plpgsql keeps a session's plans, and a plan made while the
-- table looked small reads it whole on every call once it has grown (draining
-- 20,000 tasks ran five times slower whenever the worker's plans were made
-- before the table filled). Every read these functions make has an index, so
-- the setting only forbids plans that stop being right. They set `jit = off`
-- with it: a scan of a small table with no useful index (ai_model_limits)
-- keeps its seq scan at a "disabled" cost so high that the statement would be
-- JIT-compiled, 70 ms for a read of microseconds.

-- The claim reads a task's chat history in its own statement now.
drop function if exists ai_queue.history(uuid, timestamptz, integer);

-- Raise the project's "bad argument" error: the argument, the rule, the value.
create or replace function ai_queue.invalid_argument(
  argument text, rule text, got text, hint text default null
) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception '% %, got %', argument, rule, coalesce(got, 'null')
    using errcode = case when got is null then '22004' else '22023' end,
          column = argument,
          hint = coalesce(hint, 'See the SQL API section of the README.');
end;
$$;

-- The two arguments every worker call carries: the task, and the attempt that
-- claim_ai_task handed out for it (the fencing token).
create or replace function ai_queue.check_task_attempt(task_id uuid, attempt integer)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if task_id is null then
    perform ai_queue.invalid_argument('task_id', 'is required', null);
  end if;
  if attempt is null or attempt < 1 then
    perform ai_queue.invalid_argument('attempt', 'must be the attempt claim_ai_task returned',
      attempt::text);
  end if;
end;
$$;

-- Lock a task for a change of state; an unknown id is "not found".
create or replace function ai_queue.lock_task(task_id uuid) returns public.ai_tasks
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  task public.ai_tasks;
begin
  select * into task from public.ai_tasks t where t.id = lock_task.task_id for update;
  if not found then
    raise exception 'task % not found', task_id using errcode = 'AQ002';
  end if;
  return task;
end;
$$;

-- Lock a task that its project's owner (or the service) acts on. Another
-- user's task is "not found" as well: authorize_project's error would name
-- the project, which that user must not learn either.
create or replace function ai_queue.lock_owned_task(task_id uuid) returns public.ai_tasks
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  task public.ai_tasks := ai_queue.lock_task(task_id);
begin
  perform ai_queue.authorize_project(task.project_id);
  return task;
exception when sqlstate 'AQ002' then
  raise exception 'task % not found', task_id using errcode = 'AQ002';
end;
$$;

-- Refuse a write from an attempt that no longer holds the task.
create or replace function ai_queue.raise_not_held(task public.ai_tasks, attempt integer)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception 'task % is not held by attempt %: it is % at attempt %',
    task.id, attempt, task.status, task.attempts
    using errcode = 'AQ001',
          hint = 'The lease was taken over or the task was cancelled; discard this result.';
end;
$$;

-- Capped exponential backoff with jitter: 5 s, 10 s, 20 s ... up to 10 min,
-- each stretched by up to a quarter at random so that tasks failed together
-- by one provider outage do not all come back in the same second. The
-- exponent stops at 20 (5 * 2^19 s is far past the cap): 2^1024 overflows a
-- double, and retry_ai_task lets a task's attempts grow without end.
create or replace function ai_queue.retry_delay(attempt integer) returns interval
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  select make_interval(secs =>
    least(600, 5 * power(2, least(greatest(attempt, 1), 20) - 1)) * (1 + random() * 0.25))
$$;

-- log is plpgsql rather than a SQL function: a SQL function with a pinned
-- search_path cannot be inlined, so it is planned again on every call, while
-- plpgsql keeps its plan for the session.
create or replace function ai_queue.log(
  project_id uuid, task_id uuid, log_type text, message text, metadata jsonb default '{}'
) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into public.build_logs (project_id, task_id, log_type, message, metadata)
  values (log.project_id, log.task_id, log.log_type, log.message, log.metadata);
end;
$$;


-- Who may act on a project's tasks. A signed-in user must own the project; a
-- caller with no user (the service role, or a direct database connection of
-- the project's own backend) acts for the system. Raises "not found" rather
-- than "forbidden" so that another user's ids reveal nothing.
create or replace function ai_queue.authorize_project(target_project uuid) returns void
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  caller_role text := coalesce(nullif(current_setting('role', true), 'none'), 'none');
  caller uuid := auth.uid();
begin
  if caller_role = 'anon' then
    raise exception 'anonymous callers cannot act on tasks'
      using errcode = '42501', hint = 'Sign in first.';
  end if;

  if caller is null and caller_role <> 'authenticated' then
    return;
  end if;

  if caller is null then
    raise exception 'authenticated caller has no user id (request.jwt.claims.sub)'
      using errcode = '42501';
  end if;

  if not exists (
    select 1 from public.projects p where p.id = target_project and p.owner_id = caller
  ) then
    raise exception 'project % not found', target_project
      using errcode = 'AQ002',
            hint = 'The project does not exist or belongs to another user.';
  end if;
end;
$$;

-- Hand expired leases back: requeue the task, or fail it when that lease was
-- its last attempt. The crashed attempt stays spent, so a task that kills
-- every worker that takes it ends `failed` instead of looping.
create or replace function ai_queue.reap_expired_leases(max_tasks integer default 100)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
  reaped integer;
begin
  with expired as (
    select t.id, t.locked_by
    from public.ai_tasks t
    where t.status = 'running' and t.locked_until < now()
    order by t.locked_until
    limit max_tasks
    for update skip locked
  ), reset as (
    update public.ai_tasks t set
      status = case when t.attempts >= t.max_attempts then 'failed' else 'queued' end,
      finished_at = case when t.attempts >= t.max_attempts then now() end,
      error = format('lease of attempt %s expired: worker %s stopped renewing it',
                     t.attempts, t.locked_by),
      errors = t.errors || jsonb_build_object(
        'attempt', t.attempts, 'error', 'lease expired', 'retryable', true,
        'worker', t.locked_by, 'at', now()),
      run_at = now(),
      locked_by = null,
      locked_until = null,
      updated_at = now()
    from expired
    where t.id = expired.id
    returning t.id, t.project_id, t.status, t.attempts, t.max_attempts, t.error,
              expired.locked_by as worker
  ), partial_replies as (
    delete from public.chat_messages m
    using reset
    where m.task_id = reset.id and m.streaming
  )
  insert into public.build_logs (project_id, task_id, log_type, message, metadata)
  select r.project_id, r.id,
         case when r.status = 'failed' then 'error' else 'warning' end,
         case when r.status = 'failed'
              then format('task failed: %s, and it was the last of %s attempts',
                          r.error, r.max_attempts)
              else format('task requeued: %s', r.error) end,
         jsonb_build_object('event', 'lease_expired', 'worker', r.worker,
                            'attempt', r.attempts, 'status', r.status)
  from reset r;

  get diagnostics reaped = row_count;
  return reaped;
end;
$$;

revoke all on function
  ai_queue.invalid_argument(text, text, text, text),
  ai_queue.check_task_attempt(uuid, integer),
  ai_queue.lock_task(uuid),
  ai_queue.lock_owned_task(uuid),
  ai_queue.raise_not_held(public.ai_tasks, integer),
  ai_queue.retry_delay(integer),
  ai_queue.log(uuid, uuid, text, text, jsonb),
  ai_queue.authorize_project(uuid),
  ai_queue.reap_expired_leases(integer)
from public, anon, authenticated;

-- Pin the search_path of the RLS helper, which a migration created with an
-- empty one (see the note at the top of this file).
alter function ai_queue.owns_project(uuid) set search_path = pg_catalog, pg_temp;
