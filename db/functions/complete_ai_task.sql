-- complete_ai_task: record a task's answer, once.
--
-- In one transaction: the assistant message (turning a streamed partial reply
-- into the final one), a build log, and the task's completed status, result
-- and finish time. Only the holder of the current attempt may complete; a
-- holder repeating its own successful call (a retried request) gets the same
-- message id back and nothing is written twice. complete_ai_tasks does the
-- same for many tasks in one call.
create or replace function public.complete_ai_task(
  task_id uuid,
  attempt integer,
  content text,
  result jsonb default '{}',
  model text default null
) returns uuid
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
  done public.ai_task_completion;
begin
  -- The checks and the writes are complete_ai_tasks' (complete_ai_tasks.sql),
  -- for a batch of one: the two cannot drift apart.
  perform ai_queue.check_completion('', task_id, attempt, content, result, model);
  select * into done
  from ai_queue.complete_tasks(array[task_id], array[attempt], array[content],
                               array[result], array[model]);

  if done.outcome = 'not_found' then
    raise exception 'task % not found', task_id using errcode = 'AQ002';
  end if;
  if done.outcome = 'not_held' then
    raise exception 'task % is not held by attempt %: it is % at attempt %',
      task_id, attempt, done.status, done.attempt
      using errcode = 'AQ001',
            hint = 'The lease was taken over or the task was cancelled; discard this result.';
  end if;
  return done.message_id;
end;
$$;

comment on function public.complete_ai_task(uuid, integer, text, jsonb, text) is
  'Write the answer of a held task; raises AQ001 when the attempt no longer holds it.';
revoke all on function public.complete_ai_task(uuid, integer, text, jsonb, text)
  from public, anon, authenticated;
grant execute on function public.complete_ai_task(uuid, integer, text, jsonb, text)
  to service_role;
