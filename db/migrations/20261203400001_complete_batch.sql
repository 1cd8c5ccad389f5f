-- migrate:up
-- What complete_ai_tasks returns for each completion it was given, in the
-- order given: the assistant message id (null when refused) and the outcome:
--   completed          written now;
--   already_completed  this attempt had completed the task before (a retried
--                      call): message_id is that answer, nothing is written;
--   not_held           the attempt no longer holds the task (cancelled, taken
--                      over); status and attempt say where the task is now;
--   not_found          no task with this id.
create type public.ai_task_completion as (
  task_id uuid,
  message_id uuid,
  outcome text,
  status text,              -- the task's status after the call; null when not found
  attempt integer           -- the task's current attempt; null when not found
);

-- migrate:down
-- The functions returning the type go with it; db/functions of the version
-- before this migration defines complete_ai_task without them.
drop function if exists public.complete_ai_tasks(jsonb);
drop function if exists ai_queue.complete_tasks(uuid[], integer[], text[], jsonb[], text[]);
drop type if exists public.ai_task_completion;
