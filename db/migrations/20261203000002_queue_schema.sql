-- migrate:up
-- The queue's tables. Functions live in db/functions and are applied after
-- the migrations; this file holds only what they build on.

create schema if not exists ai_queue;
comment on schema ai_queue is
  'Internal helpers of the AI task queue; not exposed to API roles.';
revoke all on schema ai_queue from public;
grant usage on schema ai_queue to anon, authenticated, service_role;

create table public.projects (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid not null references auth.users (id) on delete cascade,
  name text not null default 'Untitled project'
    check (length(name) between 1 and 200),
  created_at timestamptz not null default now()
);
create index projects_owner_id_idx on public.projects (owner_id);

create table public.ai_tasks (
  id uuid primary key default gen_random_uuid(),
  project_id uuid not null references public.projects (id) on delete cascade,
  user_id uuid default auth.uid() references auth.users (id) on delete set null,
  type text not null
    constraint ai_tasks_type_known
    check (type in ('chat_reply', 'build_site', 'refactor_code')),
  payload jsonb not null default '{}'
    constraint ai_tasks_payload_is_object check (jsonb_typeof(payload) = 'object'),
  status text not null default 'queued'
    constraint ai_tasks_status_known
    check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
  result jsonb,
  model text check (length(model) between 1 and 200),
  error text,
  attempts integer not null default 0 check (attempts >= 0),
  -- attempts only grows (a release on shutdown gives back the unspent one), so
  -- it doubles as the fencing token; retry_ai_task raises max_attempts.
  max_attempts integer not null default 3 check (max_attempts >= 1),
  priority integer not null default 0 check (priority between -100 and 100),
  -- When a queued task may next be claimed: now for a new task, later after a
  -- failure (backoff) or a provider's Retry-After.
  run_at timestamptz not null default now(),
  -- The lease: who holds a running task and until when. A lease that runs out
  -- lets another worker take the task over; `attempts` is the fencing token.
  locked_by text,
  locked_until timestamptz,
  -- One entry per failed attempt: {attempt, error, retryable, worker, at}.
  errors jsonb not null default '[]'
    constraint ai_tasks_errors_is_array check (jsonb_typeof(errors) = 'array'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,

  constraint ai_tasks_attempts_within_max check (attempts <= max_attempts),
  constraint ai_tasks_finished_iff_final check (
    (status in ('completed', 'failed', 'cancelled')) = (finished_at is not null)),
  constraint ai_tasks_running_has_lease check (
    (status = 'running') = (locked_by is not null and locked_until is not null)),
  constraint ai_tasks_running_has_attempt check (status <> 'running' or attempts >= 1),
  constraint ai_tasks_completed_has_result check (status <> 'completed' or result is not null)
);

-- The claim reads queued tasks in priority, due-time, age order; these partial
-- indexes hold only claimable rows, so they stay small however long the
-- history grows.
create index ai_tasks_claim_idx on public.ai_tasks (priority desc, run_at, created_at)
  where status = 'queued';
create index ai_tasks_claim_project_idx
  on public.ai_tasks (project_id, priority desc, run_at, created_at)
  where status = 'queued';
create index ai_tasks_lease_idx on public.ai_tasks (locked_until)
  where status = 'running';
create index ai_tasks_project_created_idx on public.ai_tasks (project_id, created_at desc);

create table public.chat_messages (
  id uuid primary key default gen_random_uuid(),
  -- A total order for messages written in one transaction (same created_at).
  seq bigint generated always as identity unique,
  project_id uuid not null references public.projects (id) on delete cascade,
  role text not null check (role in ('user', 'assistant', 'system')),
  content text not null check (length(content) <= 200000),
  task_id uuid references public.ai_tasks (id) on delete set null,
  -- True while the runner is still writing a streamed reply.
  streaming boolean not null default false,
  metadata jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint chat_messages_streaming_is_assistant check (not streaming or role = 'assistant')
);
-- The history query: a project's latest messages.
create index chat_messages_history_idx
  on public.chat_messages (project_id, created_at desc, seq desc);
-- A task writes at most one answer, whatever its retries and takeovers do.
create unique index chat_messages_one_answer_per_task
  on public.chat_messages (task_id) where role = 'assistant';

create table public.build_logs (
  id bigint generated always as identity primary key,
  project_id uuid not null references public.projects (id) on delete cascade,
  task_id uuid references public.ai_tasks (id) on delete set null,
  log_type text not null check (log_type in ('info', 'warning', 'error')),
  message text not null,
  metadata jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz not null default now()
);
create index build_logs_project_created_idx on public.build_logs (project_id, created_at desc);
create index build_logs_task_idx on public.build_logs (task_id) where task_id is not null;

-- What claim_ai_task returns for each task it hands out.
create type public.ai_task_claim as (
  id uuid,
  project_id uuid,
  user_id uuid,
  type text,
  payload jsonb,
  model text,
  priority integer,
  attempt integer,          -- the fencing token: hand it back to complete/fail
  max_attempts integer,
  created_at timestamptz,
  lease_expires_at timestamptz,
  history jsonb             -- the project's last messages, oldest first
);

-- Row-level security. Supabase grants every new table in public to anon and
-- authenticated by default, so privileges are revoked first and granted back
-- column by column; the policies then narrow rows to the caller's projects.
alter table public.projects enable row level security;
alter table public.ai_tasks enable row level security;
alter table public.chat_messages enable row level security;
alter table public.build_logs enable row level security;

revoke all on public.projects, public.ai_tasks, public.chat_messages, public.build_logs
  from public, anon, authenticated;
grant all on public.projects, public.ai_tasks, public.chat_messages, public.build_logs
  to service_role;

grant select, delete on public.projects to authenticated;
grant insert (name), update (name) on public.projects to authenticated;
grant select on public.ai_tasks, public.chat_messages, public.build_logs to authenticated;
-- A browser may create a task and a user message, never choose queue state.
grant insert (project_id, type, payload, model) on public.ai_tasks to authenticated;
grant insert (project_id, role, content, metadata) on public.chat_messages to authenticated;

-- Policies call this instead of joining projects, which would be filtered by
-- the projects policy in turn.
create function ai_queue.owns_project(target_project uuid) returns boolean
language sql stable security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.projects p
    where p.id = target_project and p.owner_id = auth.uid()
  )
$$;
revoke all on function ai_queue.owns_project(uuid) from public;
grant execute on function ai_queue.owns_project(uuid) to authenticated, service_role;

alter table public.projects alter column owner_id set default auth.uid();

create policy projects_owner_select on public.projects
  for select to authenticated using (owner_id = (select auth.uid()));
create policy projects_owner_insert on public.projects
  for insert to authenticated with check (owner_id = (select auth.uid()));
create policy projects_owner_update on public.projects
  for update to authenticated
  using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));
create policy projects_owner_delete on public.projects
  for delete to authenticated using (owner_id = (select auth.uid()));

create policy ai_tasks_owner_select on public.ai_tasks
  for select to authenticated using (ai_queue.owns_project(project_id));
create policy ai_tasks_owner_insert on public.ai_tasks
  for insert to authenticated with check (
    ai_queue.owns_project(project_id)
    and user_id = (select auth.uid())
    and status = 'queued' and attempts = 0 and result is null
    and locked_by is null and locked_until is null);

create policy chat_messages_owner_select on public.chat_messages
  for select to authenticated using (ai_queue.owns_project(project_id));
create policy chat_messages_owner_insert on public.chat_messages
  for insert to authenticated with check (
    ai_queue.owns_project(project_id) and role = 'user' and task_id is null);

create policy build_logs_owner_select on public.build_logs
  for select to authenticated using (ai_queue.owns_project(project_id));

-- migrate:down
drop type if exists public.ai_task_claim;
drop table if exists public.build_logs;
drop table if exists public.chat_messages;
drop table if exists public.ai_tasks;
drop table if exists public.projects;
drop schema if exists ai_queue cascade;
