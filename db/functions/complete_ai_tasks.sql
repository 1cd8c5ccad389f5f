-- complete_ai_tasks: record many tasks' answers in one transaction.
--
-- Each completion means exactly what complete_ai_task means for one task
-- (which is written on the same helpers below): the assistant message, turning
-- a streamed partial reply into the final one, a build log, and the task's
-- completed status, result and finish time; only the holder of the current
-- attempt may complete, and a holder repeating its own successful call gets
-- the same message id back. What differs is that one refused completion does
-- not fail the others: every entry gets a row saying what happened to it.
--
-- Why batch: a worker finishing hundreds of tasks a second paid one commit
-- (a WAL flush, an fsync) and one round trip per task. One call for a batch
-- pays them once.

-- The rules every completion's arguments follow, named as the caller named
-- them: `field_prefix` is '' for complete_ai_task's own arguments and
-- 'completions[3].' for an entry of complete_ai_tasks.
create or replace function ai_queue.check_completion(
  field_prefix text, task_id uuid, attempt integer, content text, result jsonb, model text
) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if task_id is null then
    perform ai_queue.invalid_argument(field_prefix || 'task_id', 'is required', null);
  end if;
  if attempt is null or attempt < 1 then
    perform ai_queue.invalid_argument(field_prefix || 'attempt',
      'must be the attempt claim_ai_task returned', attempt::text);
  end if;
  if content is null or length(content) > 200000 then
    perform ai_queue.invalid_argument(field_prefix || 'content',
      'must be text of at most 200000 characters',
      case when content is null then null else length(content) || ' characters' end);
  end if;
  if result is not null and jsonb_typeof(result) <> 'object' then
    perform ai_queue.invalid_argument(field_prefix || 'result', 'must be a JSON object',
      jsonb_typeof(result));
  end if;
  if model is not null and length(model) not between 1 and 200 then
    perform ai_queue.invalid_argument(field_prefix || 'model', 'must be 1 to 200 characters',
      quote_literal(model));
  end if;
end;
$$;
revoke all on function ai_queue.check_completion(text, uuid, integer, text, jsonb, text)
  from public;

-- The writes of complete_ai_task and complete_ai_tasks, for arguments already
-- checked (and task ids that appear once): one row per input position, in
-- input order.
--
-- The tasks are locked first, in id order, so that two batches sharing tasks
-- wait for each other instead of deadlocking; the writes then read the locked
-- rows afresh (a new statement sees what the transactions it waited for
-- committed), as complete_ai_task always did. Messages are upserted: a task
-- whose reply was streamed has its assistant message already, which becomes
-- the final one with the streaming mark taken out of its metadata (a client
-- that reads metadata must not be told it is still being written).
create or replace function ai_queue.complete_tasks(
  task_ids uuid[], attempts integer[], contents text[], results jsonb[], models text[]
) returns setof public.ai_task_completion
language plpgsql volatile
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
-- One plan for every call: planning the statement below anew for each
-- complete_ai_task call made that path 40% slower than before it shared
-- this code (300 completions in one transaction: 400 ms against 170 ms).
-- The `any (task_ids)` conditions keep the generic plan on the primary key.
set plan_cache_mode = force_generic_plan
as $$
begin
  perform 1 from public.ai_tasks t where t.id = any (task_ids) order by t.id for update;

  return query
  with given as (
    select c.task_id, c.attempt, c.content, c.result, c.model, c.n
    from unnest(task_ids, attempts, contents, results, models)
      with ordinality c (task_id, attempt, content, result, model, n)
  ), judged as (
    select g.*, t.project_id, t.status, t.attempts as held_attempt, t.model as task_model,
           t.locked_by as worker,
           case when t.id is null then 'not_found'
                when t.status = 'completed' and t.attempts = g.attempt then 'already_completed'
                when t.status = 'running' and t.attempts = g.attempt then 'completed'
                else 'not_held'
           end as outcome
    from given g
    -- `any (task_ids)` keeps the plan on the primary key however many rows
    -- the planner guesses the arrays hold; a guess of many would otherwise
    -- read the whole table for a hash join.
    left join public.ai_tasks t on t.id = g.task_id and t.id = any (task_ids)
  ), answers as (
    insert into public.chat_messages as m (project_id, role, content, task_id, metadata)
    select j.project_id, 'assistant', j.content, j.task_id, coalesce(j.result, '{}')
    from judged j
    where j.outcome = 'completed'
    order by j.n
    on conflict (task_id) where role = 'assistant' do update set
      content = excluded.content,
      streaming = false,
      metadata = (m.metadata - 'streaming') || excluded.metadata,
      updated_at = now()
    returning m.task_id, m.id
  ), finished as (
    update public.ai_tasks t set
      status = 'completed',
      result = coalesce(j.result, '{}'),
      model = coalesce(j.model, t.model),
      error = null,
      finished_at = now(),
      locked_by = null,
      locked_until = null,
      updated_at = now()
    from judged j
    where t.id = j.task_id and t.id = any (task_ids) and j.outcome = 'completed'
  ), logged as (
    insert into public.build_logs (project_id, task_id, log_type, message, metadata)
    select j.project_id, j.task_id, 'info',
           format('task completed by %s on attempt %s', j.worker, j.attempt),
           jsonb_build_object('event', 'completed', 'worker', j.worker, 'attempt', j.attempt,
                              'message_id', a.id, 'model', coalesce(j.model, j.task_model))
    from judged j
    join answers a on a.task_id = j.task_id
    order by j.n
  )
  select j.task_id,
         case j.outcome
           when 'completed' then a.id
           when 'already_completed' then
             (select m.id from public.chat_messages m
              where m.task_id = j.task_id and m.role = 'assistant')
         end,
         j.outcome,
         case when j.outcome = 'completed' then 'completed' else j.status end,
         j.held_attempt
  from judged j
  left join answers a on a.task_id = j.task_id
  order by j.n;
end;
$$;
revoke all on function
  ai_queue.complete_tasks(uuid[], integer[], text[], jsonb[], text[]) from public;

-- completions: a JSON array of at most 1000 objects
--   {task_id, attempt, content, result?, model?}
-- with complete_ai_task's arguments. Every entry is checked before anything
-- is written; a bad one raises 22023 (22004 when missing) naming it, e.g.
-- `completions[3].attempt`, and nothing is written. Returns one
-- ai_task_completion per entry, in the order given.
create or replace function public.complete_ai_tasks(completions jsonb)
returns setof public.ai_task_completion
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
  -- A batch of 1000 answers of up to 200,000 characters each is already
  -- 200 MB of text in one statement; past that, split the call.
  max_entries constant integer := 1000;
  entry record;
  field text;
  value jsonb;
  dup record;
  ids uuid[];
  attempts integer[];
  contents text[];
  results jsonb[];
  models text[];
begin
  if completions is null then
    perform ai_queue.invalid_argument('completions', 'is required', null,
      'Pass a JSON array of {task_id, attempt, content, result, model} objects.');
  end if;
  if jsonb_typeof(completions) <> 'array' then
    perform ai_queue.invalid_argument('completions', 'must be a JSON array',
      jsonb_typeof(completions),
      'Pass a JSON array of {task_id, attempt, content, result, model} objects.');
  end if;
  if jsonb_array_length(completions) > max_entries then
    perform ai_queue.invalid_argument('completions',
      format('must hold at most %s entries', max_entries),
      jsonb_array_length(completions) || ' entries', 'Split the batch into several calls.');
  end if;

  -- Step 1: each entry's JSON shape, then complete_ai_task's rules.
  for entry in
    select e.value as v, (e.ordinality - 1)::integer as i
    from jsonb_array_elements(completions) with ordinality e
  loop
    field := format('completions[%s]', entry.i);
    if jsonb_typeof(entry.v) <> 'object' then
      perform ai_queue.invalid_argument(field, 'must be a JSON object', jsonb_typeof(entry.v));
    end if;
    if entry.v - array['task_id', 'attempt', 'content', 'result', 'model'] <> '{}' then
      perform ai_queue.invalid_argument(field,
        'must have only the fields task_id, attempt, content, result and model',
        (select string_agg(quote_literal(k), ', ' order by k)
         from jsonb_object_keys(entry.v - array['task_id', 'attempt', 'content', 'result',
                                                'model']) k));
    end if;

    value := entry.v -> 'task_id';
    if value is not null and value <> 'null' and not (
         jsonb_typeof(value) = 'string'
         and value #>> '{}' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
    then
      perform ai_queue.invalid_argument(field || '.task_id', 'must be a task id (a uuid string)',
        left(value::text, 100));
    end if;
    value := entry.v -> 'attempt';
    if value is not null and value <> 'null' and not (
         jsonb_typeof(value) = 'number' and value::text ~ '^-?\d{1,9}$') then
      perform ai_queue.invalid_argument(field || '.attempt',
        'must be the attempt claim_ai_task returned', left(value::text, 100));
    end if;
    value := entry.v -> 'content';
    if value is not null and value <> 'null' and jsonb_typeof(value) <> 'string' then
      perform ai_queue.invalid_argument(field || '.content',
        'must be text of at most 200000 characters', jsonb_typeof(value));
    end if;
    value := entry.v -> 'model';
    if value is not null and value <> 'null' and jsonb_typeof(value) <> 'string' then
      perform ai_queue.invalid_argument(field || '.model', 'must be 1 to 200 characters',
        left(value::text, 100));
    end if;

    perform ai_queue.check_completion(field || '.',
      (entry.v ->> 'task_id')::uuid, (entry.v ->> 'attempt')::integer, entry.v ->> 'content',
      nullif(entry.v -> 'result', 'null'), entry.v ->> 'model');
  end loop;

  select array_agg((e.value ->> 'task_id')::uuid order by e.ordinality),
         array_agg((e.value ->> 'attempt')::integer order by e.ordinality),
         array_agg(e.value ->> 'content' order by e.ordinality),
         array_agg(nullif(e.value -> 'result', 'null') order by e.ordinality),
         array_agg(e.value ->> 'model' order by e.ordinality)
    into ids, attempts, contents, results, models
  from jsonb_array_elements(completions) with ordinality e;
  if ids is null then
    return;
  end if;

  -- Step 2: a task completed twice in one call has no single outcome.
  select d.i, d.first_i into dup
  from (
    select (u.n - 1)::integer as i,
           (first_value(u.n) over (partition by u.id order by u.n) - 1)::integer as first_i
    from unnest(ids) with ordinality u (id, n)
  ) d
  where d.i <> d.first_i
  order by d.i
  limit 1;
  if found then
    perform ai_queue.invalid_argument(format('completions[%s].task_id', dup.i),
      format('must not repeat the task of completions[%s]', dup.first_i),
      quote_literal(ids[dup.i + 1]::text));
  end if;

  -- Step 3: the writes, shared with complete_ai_task.
  return query select * from ai_queue.complete_tasks(ids, attempts, contents, results, models);
end;
$$;

comment on function public.complete_ai_tasks(jsonb) is
  'Write the answers of many held tasks at once; one outcome row per entry, '
  'a refused entry (not_held, not_found) leaves the others written.';
revoke all on function public.complete_ai_tasks(jsonb) from public, anon, authenticated;
grant execute on function public.complete_ai_tasks(jsonb) to service_role;
