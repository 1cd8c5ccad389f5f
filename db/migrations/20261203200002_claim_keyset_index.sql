-- migrate:up
-- The claim walks due tasks in priority, due-time, age order and, when one
-- project's backlog fills its window, carries on from the last task it read.
-- A keyset continuation needs a single-direction key, so the order is indexed
-- as (-priority, run_at, created_at, id): the row comparison
-- (-priority, run_at, created_at, id) > (last ...) then starts the next scan
-- where the previous one stopped instead of reading its rows again. It
-- replaces ai_tasks_claim_idx, which only the claim read.
create index ai_tasks_claim_order_idx
  on public.ai_tasks ((-priority), run_at, created_at, id)
  where status = 'queued';
drop index if exists public.ai_tasks_claim_idx;

-- migrate:down
create index if not exists ai_tasks_claim_idx
  on public.ai_tasks (priority desc, run_at, created_at)
  where status = 'queued';
drop index if exists public.ai_tasks_claim_order_idx;
