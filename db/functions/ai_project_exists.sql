-- ai_project_exists: whether a project exists, for the runner's HTTP handler,
-- which answers 404 to a request naming an unknown project. An RPC rather than
-- a table read so that every runtime reaches it the same way (supabase.rpc or
-- SQL). Service role only: for anyone else it would reveal other users' ids.
create or replace function public.ai_project_exists(project_id uuid) returns boolean
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from public.projects p where p.id = ai_project_exists.project_id)
$$;

comment on function public.ai_project_exists(uuid) is
  'True when the project exists. For the runner; service role only.';
revoke all on function public.ai_project_exists(uuid) from public, anon, authenticated;
grant execute on function public.ai_project_exists(uuid) to service_role;
