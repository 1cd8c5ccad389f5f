-- complete_ai_task: record a task's answer, once.
--
-- In one transaction: the assistant message (turning a streamed partial reply
-- into the final one), a build log, and the task's completed status, result
-- and finish time. Only the holder of the current attempt may complete; a
-- holder repeating its own successful call (a retried request) gets the same
-- message id back and nothing is written twice.
create or replace function public.complete_ai_task(
  task_id uuid,
  attempt integer,
  content text,
  result jsonb default '{}',
  model text default null
) returns uuid
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  task public.ai_tasks;
  message_id uuid;
begin
  if task_id is null then
    perform ai_queue.invalid_argument('task_id', 'is required', null);
  end if;
  if attempt is null or attempt < 1 then
    perform ai_queue.invalid_argument('attempt', 'must be the attempt claim_ai_task returned',
      attempt::text);
  end if;
  if content is null or length(content) > 200000 then
    perform ai_queue.invalid_argument('content', 'must be text of at most 200000 characters',
      case when content is null then null else length(content) || ' characters' end);
  end if;
  if result is not null and jsonb_typeof(result) <> 'object' then
    perform ai_queue.invalid_argument('result', 'must be a JSON object',
      jsonb_typeof(result));
  end if;
  if model is not null and length(model) not between 1 and 200 then
    perform ai_queue.invalid_argument('model', 'must be 1 to 200 characters',
      quote_literal(model));
  end if;

  select * into task from public.ai_tasks t where t.id = complete_ai_task.task_id for update;
  if not found then
    raise exception 'task % not found', task_id using errcode = 'AQ002';
  end if;

  if task.status = 'completed' and task.attempts = attempt then
    select m.id into message_id from public.chat_messages m
    where m.task_id = task.id and m.role = 'assistant';
    return message_id;
  end if;
  if task.status <> 'running' or task.attempts <> attempt then
    raise exception 'task % is not held by attempt %: it is % at attempt %',
      task_id, attempt, task.status, task.attempts
      using errcode = 'AQ001',
            hint = 'The lease was taken over or the task was cancelled; discard this result.';
  end if;

  update public.chat_messages m set
    content = complete_ai_task.content,
    streaming = false,
    -- stream_ai_task_reply marks its message in metadata too; a final answer
    -- must not tell a client that reads metadata it is still being written.
    metadata = (m.metadata - 'streaming') || coalesce(complete_ai_task.result, '{}'),
    updated_at = now()
  where m.task_id = task.id and m.role = 'assistant'
  returning m.id into message_id;
  if message_id is null then
    insert into public.chat_messages (project_id, role, content, task_id, metadata)
    values (task.project_id, 'assistant', content, task.id, coalesce(result, '{}'))
    returning id into message_id;
  end if;

  update public.ai_tasks t set
    status = 'completed',
    result = coalesce(complete_ai_task.result, '{}'),
    model = coalesce(complete_ai_task.model, t.model),
    error = null,
    finished_at = now(),
    locked_by = null,
    locked_until = null,
    updated_at = now()
  where t.id = task.id;

  perform ai_queue.log(task.project_id, task.id, 'info',
    format('task completed on attempt %s', attempt),
    jsonb_build_object('event', 'completed', 'attempt', attempt, 'message_id', message_id,
                       'model', coalesce(model, task.model)));
  return message_id;
end;
$$;

comment on function public.complete_ai_task(uuid, integer, text, jsonb, text) is
  'Write the answer of a held task; raises AQ001 when the attempt no longer holds it.';
revoke all on function public.complete_ai_task(uuid, integer, text, jsonb, text)
  from public, anon, authenticated;
grant execute on function public.complete_ai_task(uuid, integer, text, jsonb, text)
  to service_role;
