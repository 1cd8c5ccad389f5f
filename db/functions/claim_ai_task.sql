-- claim_ai_task: hand up to batch_size due tasks to one worker.
--
-- Takes queued tasks whose run_at has come (first handing back expired leases),
-- highest priority first, then oldest due time, then oldest task; locks them
-- with SKIP LOCKED so that concurrent workers never receive the same task,
-- marks them running under a lease, and returns each with its fencing token
-- (`attempt`) and the chat history it should answer.
create or replace function public.claim_ai_task(
  worker_id text,
  project_id uuid default null,
  batch_size integer default 1,
  lease_seconds integer default 300
) returns setof public.ai_task_claim
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  picked uuid[];
  lease_until timestamptz;
begin
  if worker_id is null or length(btrim(worker_id)) = 0 or length(worker_id) > 200 then
    perform ai_queue.invalid_argument('worker_id', 'must be 1 to 200 characters',
      quote_literal(worker_id), 'Name the worker, e.g. its host and process id.');
  end if;
  if batch_size is null or batch_size not between 1 and 1000 then
    perform ai_queue.invalid_argument('batch_size', 'must be between 1 and 1000',
      batch_size::text);
  end if;
  if lease_seconds is null or lease_seconds not between 5 and 3600 then
    perform ai_queue.invalid_argument('lease_seconds', 'must be between 5 and 3600',
      lease_seconds::text, 'Extend a long task''s lease with extend_ai_task_lease.');
  end if;
  lease_until := now() + make_interval(secs => lease_seconds);

  -- Tasks whose worker vanished become claimable again (or fail) first.
  perform ai_queue.reap_expired_leases(batch_size);

  -- Two spellings of one query, so each can use its own partial index.
  if claim_ai_task.project_id is null then
    select array_agg(t.id) into picked from (
      select t.id from public.ai_tasks t
      where t.status = 'queued' and t.run_at <= now()
      order by t.priority desc, t.run_at, t.created_at
      limit batch_size
      for update skip locked
    ) t;
  else
    select array_agg(t.id) into picked from (
      select t.id from public.ai_tasks t
      where t.status = 'queued' and t.run_at <= now()
        and t.project_id = claim_ai_task.project_id
      order by t.priority desc, t.run_at, t.created_at
      limit batch_size
      for update skip locked
    ) t;
  end if;

  if picked is null then
    return;
  end if;

  return query
  with claimed as (
    update public.ai_tasks t set
      status = 'running',
      attempts = t.attempts + 1,
      started_at = now(),
      locked_by = claim_ai_task.worker_id,
      locked_until = lease_until,
      updated_at = now()
    where t.id = any (picked)
    returning t.*
  ), logged as (
    insert into public.build_logs (project_id, task_id, log_type, message, metadata)
    select c.project_id, c.id, 'info',
           format('task claimed by %s (attempt %s of %s)',
                  claim_ai_task.worker_id, c.attempts, c.max_attempts),
           jsonb_build_object('event', 'claimed', 'worker', claim_ai_task.worker_id,
                              'attempt', c.attempts)
    from claimed c
  )
  select c.id, c.project_id, c.user_id, c.type, c.payload, c.model, c.priority,
         c.attempts, c.max_attempts, c.created_at, c.locked_until,
         ai_queue.history(c.project_id, c.created_at, 10)
  from claimed c
  order by c.priority desc, c.run_at, c.created_at;
end;
$$;

comment on function public.claim_ai_task(text, uuid, integer, integer) is
  'Claim up to batch_size due tasks for worker_id under a lease of lease_seconds; '
  'returns each with its fencing token (attempt) and chat history.';
revoke all on function public.claim_ai_task(text, uuid, integer, integer)
  from public, anon, authenticated;
grant execute on function public.claim_ai_task(text, uuid, integer, integer)
  to service_role;
