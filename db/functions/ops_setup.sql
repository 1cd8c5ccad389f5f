-- Supabase-only wiring, each step guarded so that the same code runs on a
-- Supabase project and on plain PostgreSQL, and idempotent so that every
-- scripts/migrate.sh run converges on it (enable pg_net or pg_cron later, run
-- the script again, and the missing pieces appear). The calls are at the end
-- of this file rather than in a migration because db/functions is applied
-- after the migrations: a migration could not yet call these functions.

-- Realtime: publish chat_messages (replies appear and grow while streamed)
-- and ai_tasks (status changes) where the supabase_realtime publication
-- exists. Returns the tables it added.
--
-- Replica identity stays DEFAULT (the primary key). Realtime sends the whole
-- new row for INSERT and UPDATE, which is all a streaming reply needs; for
-- DELETE it sends the old row's key, and with RLS on it sends only the key
-- even under FULL. FULL would log the old row, content included (up to
-- 200000 characters), on every streamed chunk, for nothing a client can use.
create or replace function ai_queue.setup_realtime() returns text[]
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  publication pg_catalog.pg_publication;
  table_name text;
  added text[] := '{}';
begin
  select * into publication from pg_catalog.pg_publication p
  where p.pubname = 'supabase_realtime';
  if not found then
    raise notice 'publication supabase_realtime does not exist; Realtime setup skipped';
    return added;
  end if;
  if publication.puballtables then
    raise notice 'publication supabase_realtime already publishes every table';
    return added;
  end if;
  if not (publication.pubinsert and publication.pubupdate and publication.pubdelete) then
    raise warning 'publication supabase_realtime does not publish inserts, updates and '
                  'deletes; streamed replies need all three'
      using hint = 'alter publication supabase_realtime set (publish = ''insert, update, delete'')';
  end if;

  foreach table_name in array array['chat_messages', 'ai_tasks'] loop
    if not exists (
      select from pg_catalog.pg_publication_tables pt
      where pt.pubname = 'supabase_realtime'
        and pt.schemaname = 'public' and pt.tablename = table_name
    ) then
      execute format('alter publication supabase_realtime add table %I.%I',
                     'public', table_name);
      added := added || format('public.%s', table_name);
    end if;
  end loop;
  return added;
end;
$$;

-- pg_cron jobs: hourly retention (public.purge_ai_queue_history) and, where
-- pg_net exists, the dispatch job that wakes the runner when due tasks wait:
-- every 5 seconds on pg_cron 1.5 and later, which takes second intervals,
-- every minute on older versions. cron_version overrides the installed
-- version (tests pass one). Returns one line per job it scheduled or removed.
create or replace function ai_queue.setup_schedules(cron_version text default null)
returns text[]
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  version text := cron_version;
  parts text[];
  dispatch_schedule text;
  done text[] := '{}';
begin
  if version is null then
    select e.extversion into version from pg_catalog.pg_extension e
    where e.extname = 'pg_cron';
  end if;
  if version is null or to_regprocedure('cron.schedule(text,text,text)') is null then
    raise notice 'pg_cron is not installed in this database; '
                 'retention and dispatch jobs not scheduled';
    return done;
  end if;

  parts := regexp_match(version, '^(\d+)\.(\d+)');
  if parts is null then
    perform ai_queue.invalid_argument('cron_version', 'must look like 1.4 or 1.6.4',
      quote_literal(version));
  end if;
  dispatch_schedule := case
    when (parts[1]::integer, parts[2]::integer) >= (1, 5) then '5 seconds'
    else '* * * * *'
  end;

  -- Scheduling under an existing name replaces that job, so a re-run is safe.
  perform cron.schedule('ai-tasks-retention', '17 * * * *',
                        'select public.purge_ai_queue_history()');
  done := done || 'ai-tasks-retention 17 * * * *'::text;

  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null then
    perform cron.schedule('ai-tasks-dispatch', dispatch_schedule,
                          'select ai_queue.dispatch_due_tasks()');
    done := done || format('ai-tasks-dispatch %s', dispatch_schedule);
  elsif exists (select from cron.job j where j.jobname = 'ai-tasks-dispatch') then
    -- pg_net went away: the job would fail on every run.
    perform cron.unschedule('ai-tasks-dispatch');
    done := done || 'ai-tasks-dispatch removed'::text;
  end if;
  return done;
end;
$$;

revoke all on function ai_queue.setup_realtime(), ai_queue.setup_schedules(text)
  from public, anon, authenticated;

do $$
begin
  perform ai_queue.setup_realtime();
  perform ai_queue.setup_schedules();
end
$$;
