-- migrate:up
-- Fairness, rate limits, snooze and deduplication: the columns and tables the
-- claim, enqueue and snooze functions build on. Values an operator tunes live
-- in public.ai_queue_settings, never in function bodies.

-- Queue settings: one typed row, so every value has a type, a range check and
-- a default. The service reads and changes it; API users never see it.
create table public.ai_queue_settings (
  id boolean primary key default true constraint ai_queue_settings_single_row check (id),
  -- Tasks of one project that may run at once unless the project says otherwise.
  default_max_running_tasks integer not null default 4
    check (default_max_running_tasks between 1 and 1000),
  -- The model a task runs on when it names none (the runner's default too).
  default_model text not null default 'openai/gpt-4o-mini'
    check (length(default_model) between 1 and 200),
  -- How long a snoozed task waits when the provider gave no Retry-After.
  snooze_default_seconds integer not null default 30
    check (snooze_default_seconds between 0 and 86400),
  -- Snoozes a task may take in its life; the next rate-limit answer is a failure.
  max_snoozes integer not null default 10 check (max_snoozes between 0 and 1000),
  updated_at timestamptz not null default now()
);
insert into public.ai_queue_settings default values;

-- Per-model limits, set by the service. A model without a row is unlimited.
-- The window columns are the claim's bookkeeping: requests handed out and
-- tokens reported in the current one-minute window.
create table public.ai_model_limits (
  model text primary key check (length(model) between 1 and 200),
  requests_per_minute integer check (requests_per_minute >= 0),  -- null: no limit
  tokens_per_minute integer check (tokens_per_minute >= 0),      -- null: no limit
  -- No task of this model is handed out before this time; a snooze (the
  -- provider's Retry-After) pushes it out, the service may set it by hand.
  paused_until timestamptz,
  window_start timestamptz not null default '-infinity',
  window_requests integer not null default 0 check (window_requests >= 0),
  window_tokens bigint not null default 0 check (window_tokens >= 0),
  updated_at timestamptz not null default now()
);

-- null: the project runs up to ai_queue_settings.default_max_running_tasks.
alter table public.projects add column max_running_tasks integer
  constraint projects_max_running_tasks_range check (max_running_tasks between 1 and 1000);

-- Rate-limit answers that put the task back without spending an attempt.
alter table public.ai_tasks add column snoozes integer not null default 0
  constraint ai_tasks_snoozes_non_negative check (snoozes >= 0);

-- A caller's key for "this is the same request": unique per project among the
-- tasks that are not finished, so a key may be used again once its task ends.
alter table public.ai_tasks add column idempotency_key text
  constraint ai_tasks_idempotency_key_length check (length(idempotency_key) between 1 and 200);
create unique index ai_tasks_idempotency_key_idx
  on public.ai_tasks (project_id, idempotency_key)
  where status in ('queued', 'running') and idempotency_key is not null;

-- The claim counts each project's running tasks against its cap.
create index ai_tasks_running_project_idx on public.ai_tasks (project_id)
  where status = 'running';

alter table public.ai_queue_settings enable row level security;
alter table public.ai_model_limits enable row level security;
revoke all on public.ai_queue_settings, public.ai_model_limits
  from public, anon, authenticated;
grant all on public.ai_queue_settings, public.ai_model_limits to service_role;

-- migrate:down
-- The functions built on these tables go first (their types depend on them);
-- after a rollback, apply db/functions of the matching revision again.
drop trigger if exists ai_tasks_count_model_tokens on public.ai_tasks;
drop function if exists ai_queue.count_model_tokens();
drop function if exists ai_queue.pause_model(text, timestamptz);
drop function if exists ai_queue.settings();
drop function if exists public.snooze_ai_task(uuid, integer, integer, text);
drop index if exists public.ai_tasks_running_project_idx;
drop index if exists public.ai_tasks_idempotency_key_idx;
alter table public.ai_tasks drop column if exists idempotency_key;
alter table public.ai_tasks drop column if exists snoozes;
alter table public.projects drop column if exists max_running_tasks;
drop table if exists public.ai_model_limits;
drop table if exists public.ai_queue_settings;
