-- migrate:up
-- What list_failed_ai_tasks returns for each task. A named type, because
-- the function's project_id argument and a project_id output column could
-- not share the name otherwise. A first version of the function returned a
-- table; it goes, so that db/functions can create the new one.
drop function if exists public.list_failed_ai_tasks(uuid, integer, timestamptz);
create type public.ai_failed_task as (
  id uuid,
  project_id uuid,
  type text,
  model text,
  attempts integer,
  max_attempts integer,
  error text,               -- the last error
  errors jsonb,             -- every failed attempt, oldest first
  created_at timestamptz,
  finished_at timestamptz   -- when it failed for good
);

-- migrate:down
drop function if exists public.list_failed_ai_tasks(uuid, integer, timestamptz);
drop type if exists public.ai_failed_task;
