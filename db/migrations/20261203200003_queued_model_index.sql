-- migrate:up
-- Which models have due queued tasks, for the claim's check that anything at
-- all may be handed out while a model is paused: with the only model in use
-- paused by a 429, the claim answers "nothing" from this index instead of
-- reading the whole queue to find no task it may take.
create index ai_tasks_queued_model_idx on public.ai_tasks (model, run_at)
  where status = 'queued';

-- migrate:down
drop index if exists public.ai_tasks_queued_model_idx;
