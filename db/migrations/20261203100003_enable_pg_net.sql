-- migrate:up
-- pg_net lets the database call the runner's Edge Function: on every insert
-- of tasks (db/functions/ops_dispatch.sql) and from the pg_cron dispatch job.
-- Supabase ships it (enabled here when missing); plain PostgreSQL does not,
-- and then the queue relies on LISTEN/NOTIFY workers and polling alone.
do $$
begin
  if exists (select from pg_catalog.pg_extension where extname = 'pg_net') then
    return;
  end if;
  if not exists (select from pg_catalog.pg_available_extensions where name = 'pg_net') then
    raise notice 'pg_net is not available here; tasks will not wake the runner over HTTP';
    return;
  end if;
  begin
    create extension pg_net;
  exception when others then
    raise notice 'pg_net could not be enabled (%); tasks will not wake the runner over HTTP',
      sqlerrm;
  end;
end
$$;

-- migrate:down
-- pg_net stays: other features of the project may call it too.
select 1;
