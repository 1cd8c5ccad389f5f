-- enqueue_ai_task: the browser's way in. Validates everything before writing,
-- optionally stores the user's chat message in the same transaction (so the
-- task's history includes it), queues the task and returns its id.
--
-- With an idempotency_key, a repeated request (a double click, a retried
-- HTTP call) gets the id of the project's unfinished (queued or running) task
-- with that key back, and nothing is written again, not even the message.
-- Once that task has finished the key starts a new task. The key names the
-- request; the other arguments of a repeat are not compared with the first.

-- The signature before idempotency_key; keeping both would make every call
-- that omits the key ambiguous.
drop function if exists public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer);

create or replace function public.enqueue_ai_task(
  project_id uuid,
  type text default 'chat_reply',
  payload jsonb default '{}',
  message text default null,
  model text default null,
  priority integer default 0,
  max_attempts integer default 3,
  idempotency_key text default null
) returns uuid
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
  known_types constant text[] := array['chat_reply', 'build_site', 'refactor_code'];
  new_task_id uuid;
  violated text;
  task_payload jsonb := coalesce(payload, '{}');
begin
  if project_id is null then
    perform ai_queue.invalid_argument('project_id', 'is required', null);
  end if;
  if type is null or not type = any (known_types) then
    perform ai_queue.invalid_argument('type', 'must be a known task type',
      quote_literal(type), 'Known types: ' || array_to_string(known_types, ', ') || '.');
  end if;
  if jsonb_typeof(task_payload) <> 'object' then
    perform ai_queue.invalid_argument('payload', 'must be a JSON object',
      jsonb_typeof(task_payload));
  end if;
  if octet_length(task_payload::text) > 1048576 then
    perform ai_queue.invalid_argument('payload', 'must be at most 1 MiB as JSON text',
      octet_length(task_payload::text) || ' bytes');
  end if;
  if message is not null and (length(btrim(message)) = 0 or length(message) > 100000) then
    perform ai_queue.invalid_argument('message', 'must be 1 to 100000 characters',
      length(message) || ' characters');
  end if;
  if model is not null and (length(model) not between 1 and 200 or model ~ '\s') then
    perform ai_queue.invalid_argument('model',
      'must be a model id of 1 to 200 characters without spaces', quote_literal(model),
      'For example openai/gpt-4o-mini.');
  end if;
  if priority is null or priority not between -100 and 100 then
    perform ai_queue.invalid_argument('priority', 'must be between -100 and 100',
      priority::text);
  end if;
  if max_attempts is null or max_attempts not between 1 and 25 then
    perform ai_queue.invalid_argument('max_attempts', 'must be between 1 and 25',
      max_attempts::text);
  end if;
  if idempotency_key is not null
     and (length(btrim(idempotency_key)) = 0 or length(idempotency_key) > 200) then
    perform ai_queue.invalid_argument('idempotency_key', 'must be 1 to 200 characters',
      quote_literal(idempotency_key), 'Pass null to queue without deduplication.');
  end if;

  perform ai_queue.authorize_project(enqueue_ai_task.project_id);
  if not exists (select 1 from public.projects p where p.id = enqueue_ai_task.project_id) then
    raise exception 'project % not found', project_id using errcode = 'AQ002';
  end if;

  if idempotency_key is null then
    new_task_id := ai_queue.insert_task(project_id, type, task_payload, message, model,
                                        priority, max_attempts, null);
  else
    -- Look first (the common repeat costs one index probe); insert otherwise.
    -- Two first requests racing both miss the lookup: the partial unique
    -- index lets one insert win, and the loser, whose message insert is
    -- undone with its own, returns the winner's task.
    for try in 1 .. 3 loop
      select t.id into new_task_id from public.ai_tasks t
      where t.project_id = enqueue_ai_task.project_id
        and t.idempotency_key = enqueue_ai_task.idempotency_key
        and t.status in ('queued', 'running');
      if found then
        return new_task_id;
      end if;

      begin
        new_task_id := ai_queue.insert_task(project_id, type, task_payload, message, model,
                                            priority, max_attempts, idempotency_key);
        exit;
      exception when unique_violation then
        get stacked diagnostics violated = constraint_name;
        if violated is distinct from 'ai_tasks_idempotency_key_idx' then
          raise;
        end if;
      end;
    end loop;
    if new_task_id is null then
      -- Each try lost a race to a task that finished before it could be read.
      raise exception 'idempotency_key % of project % is contended: try again',
        idempotency_key, project_id
        using errcode = '40001', column = 'idempotency_key';
    end if;
  end if;

  perform ai_queue.log(project_id, new_task_id, 'info', format('%s task queued', type),
    jsonb_build_object('event', 'queued', 'type', type)
      || case when idempotency_key is null then '{}'::jsonb
              else jsonb_build_object('idempotency_key', idempotency_key) end);
  return new_task_id;
end;
$$;

comment on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer, text) is
  'Queue a task for a project the caller owns (optionally with the user''s chat message); '
  'returns its id, or the unfinished task''s id when idempotency_key repeats.';
revoke all on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer, text)
  from public, anon;
grant execute on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer, text)
  to authenticated, service_role;

-- The writes of one enqueue: the user's message (when given) and the task.
create or replace function ai_queue.insert_task(
  project_id uuid, type text, payload jsonb, message text, model text,
  priority integer, max_attempts integer, idempotency_key text
) returns uuid
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  task_payload jsonb := payload;
  message_id uuid;
  new_task_id uuid;
begin
  if message is not null then
    insert into public.chat_messages (project_id, role, content)
    values (project_id, 'user', message)
    returning id into message_id;
    task_payload := task_payload || jsonb_build_object('message_id', message_id);
  end if;

  insert into public.ai_tasks (project_id, user_id, type, payload, model, priority,
                               max_attempts, idempotency_key)
  values (project_id, auth.uid(), type, task_payload, model, priority, max_attempts,
          idempotency_key)
  returning id into new_task_id;
  return new_task_id;
end;
$$;
revoke all on function
  ai_queue.insert_task(uuid, text, jsonb, text, text, integer, integer, text)
from public, anon, authenticated, service_role;
