-- Failed tasks for an operator: list them with their error history, and queue
-- them again in bulk. Service role only.

-- list_failed_ai_tasks: the most recently failed tasks first, each with every
-- failed attempt ({attempt, error, retryable, worker, at}, oldest first).
create or replace function public.list_failed_ai_tasks(
  project_id uuid default null,
  max_tasks integer default 50,
  since timestamptz default null
) returns setof public.ai_failed_task
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
  if max_tasks is null or max_tasks not between 1 and 10000 then
    perform ai_queue.invalid_argument('max_tasks', 'must be between 1 and 10000',
      max_tasks::text);
  end if;

  return query
  select t.id, t.project_id, t.type, t.model, t.attempts, t.max_attempts, t.error,
         t.errors, t.created_at, t.finished_at
  from public.ai_tasks t
  where t.status = 'failed'
    and (list_failed_ai_tasks.project_id is null
         or t.project_id = list_failed_ai_tasks.project_id)
    and (list_failed_ai_tasks.since is null or t.finished_at >= list_failed_ai_tasks.since)
  order by t.finished_at desc, t.id
  limit max_tasks;
end;
$$;

-- retry_failed_ai_tasks: retry_ai_task for every failed task of a project (or
-- of all projects) that failed at or after `since`, oldest failure first, up
-- to max_tasks. Same semantics as one retry: attempts keep counting,
-- max_attempts grows by extra_attempts, the error history stays. Tasks locked
-- by someone else right now are skipped. Returns how many were queued again.
create or replace function public.retry_failed_ai_tasks(
  project_id uuid default null,
  since timestamptz default null,
  extra_attempts integer default 3,
  max_tasks integer default 1000
) returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  failed_id uuid;
  retried integer := 0;
begin
  if extra_attempts is null or extra_attempts not between 1 and 25 then
    perform ai_queue.invalid_argument('extra_attempts', 'must be between 1 and 25',
      extra_attempts::text);
  end if;
  if max_tasks is null or max_tasks not between 1 and 100000 then
    perform ai_queue.invalid_argument('max_tasks', 'must be between 1 and 100000',
      max_tasks::text);
  end if;

  for failed_id in
    select t.id from public.ai_tasks t
    where t.status = 'failed'
      and (retry_failed_ai_tasks.project_id is null
           or t.project_id = retry_failed_ai_tasks.project_id)
      and (retry_failed_ai_tasks.since is null or t.finished_at >= retry_failed_ai_tasks.since)
    order by t.finished_at, t.id
    limit max_tasks
    for update skip locked
  loop
    perform public.retry_ai_task(failed_id, extra_attempts);
    retried := retried + 1;
  end loop;

  -- Retried tasks are updates, which the insert trigger does not see; they
  -- are due now, as if the dispatch job had found them.
  if retried > 0 then
    begin
      perform ai_queue.wake_runner('schedule', retried);
    exception when others then
      raise warning 'ai_queue: tasks were retried but the runner could not be woken: %',
        sqlerrm;
    end;
  end if;
  return retried;
end;
$$;

comment on function public.list_failed_ai_tasks(uuid, integer, timestamptz) is
  'Failed tasks, newest failure first, with their error history. Service role only.';
comment on function public.retry_failed_ai_tasks(uuid, timestamptz, integer, integer) is
  'Queue failed tasks again in bulk (retry_ai_task semantics); returns how many.';
revoke all on function
  public.list_failed_ai_tasks(uuid, integer, timestamptz),
  public.retry_failed_ai_tasks(uuid, timestamptz, integer, integer)
from public, anon, authenticated;
grant execute on function
  public.list_failed_ai_tasks(uuid, integer, timestamptz),
  public.retry_failed_ai_tasks(uuid, timestamptz, integer, integer)
to service_role;
