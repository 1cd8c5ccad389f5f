-- migrate:up
-- Indexes for the operating queries: retention, the stats windows and the
-- failed-task list all range over finish times; without these each would
-- read the whole task history.
create index if not exists ai_tasks_finished_idx
  on public.ai_tasks (finished_at) where finished_at is not null;
create index if not exists ai_tasks_failed_idx
  on public.ai_tasks (finished_at desc) where status = 'failed';
create index if not exists build_logs_created_idx on public.build_logs (created_at);

-- Deleting a task sets chat_messages.task_id to null; the only index on that
-- column holds assistant rows, so without this one each deleted task would
-- scan the whole chat history.
create index if not exists chat_messages_task_idx
  on public.chat_messages (task_id) where task_id is not null;

-- migrate:down
drop index if exists public.chat_messages_task_idx;
drop index if exists public.build_logs_created_idx;
drop index if exists public.ai_tasks_failed_idx;
drop index if exists public.ai_tasks_finished_idx;
