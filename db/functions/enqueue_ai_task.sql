-- enqueue_ai_task: the browser's way in. Validates everything before writing,
-- optionally stores the user's chat message in the same transaction (so the
-- task's history includes it), queues the task and returns its id.
create or replace function public.enqueue_ai_task(
  project_id uuid,
  type text default 'chat_reply',
  payload jsonb default '{}',
  message text default null,
  model text default null,
  priority integer default 0,
  max_attempts integer default 3
) returns uuid
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  known_types constant text[] := array['chat_reply', 'build_site', 'refactor_code'];
  new_task_id uuid;
  message_id uuid;
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

  perform ai_queue.authorize_project(enqueue_ai_task.project_id);
  if not exists (select 1 from public.projects p where p.id = enqueue_ai_task.project_id) then
    raise exception 'project % not found', project_id using errcode = 'AQ002';
  end if;

  if message is not null then
    insert into public.chat_messages (project_id, role, content)
    values (project_id, 'user', message)
    returning id into message_id;
    task_payload := task_payload || jsonb_build_object('message_id', message_id);
  end if;

  insert into public.ai_tasks (project_id, user_id, type, payload, model, priority, max_attempts)
  values (project_id, auth.uid(), type, task_payload, model, priority, max_attempts)
  returning id into new_task_id;

  perform ai_queue.log(project_id, new_task_id, 'info', format('%s task queued', type),
    jsonb_build_object('event', 'queued', 'type', type));
  return new_task_id;
end;
$$;

comment on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer) is
  'Queue a task for a project the caller owns (optionally with the user''s chat message); returns its id.';
revoke all on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer)
  from public, anon;
grant execute on function public.enqueue_ai_task(uuid, text, jsonb, text, text, integer, integer)
  to authenticated, service_role;
