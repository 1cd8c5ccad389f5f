-- migrate:up
-- dbmate keeps its bookkeeping in public.schema_migrations. On Supabase every
-- new table in public is granted to anon and authenticated by default, so the
-- REST API would let any visitor read it, or delete rows and make the next
-- deploy run old migrations again. Only the owner (dbmate) needs it.
alter table public.schema_migrations enable row level security;
revoke all on public.schema_migrations from public, anon, authenticated;

-- migrate:down
select 1;
