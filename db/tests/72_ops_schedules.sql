-- pg_cron jobs: none where pg_cron is missing; with it, an hourly retention
-- job and, where pg_net exists too, a dispatch job every 5 seconds on pg_cron
-- 1.5+ or every minute before. Re-running replaces rather than duplicates.
-- pg_cron lives only in database postgres of the local cluster, so here a
-- stand-in cron schema (schedule upserts by name, as pg_cron's does) records
-- the jobs; 79_ops_pg_cron_live.sql runs the same setup on the real one.
begin;
select plan(13);

-- ================================================================ pg_cron absent
select is(ai_queue.setup_schedules(), '{}'::text[],
  'without pg_cron nothing is scheduled');
select lives_ok($$select ai_queue.setup_schedules()$$,
  'and setup does not fail');

-- ================================================================ stand-in pg_cron
create schema cron;
create table cron.job (
  jobid bigserial primary key, jobname text unique, schedule text not null,
  command text not null, active boolean not null default true);
create function cron.schedule(job_name text, schedule text, command text) returns bigint
language sql as $$
  insert into cron.job (jobname, schedule, command) values (job_name, schedule, command)
  on conflict (jobname) do update set schedule = excluded.schedule, command = excluded.command
  returning jobid
$$;
create function cron.unschedule(job_name text) returns boolean
language plpgsql as $$
begin
  delete from cron.job where jobname = job_name;
  if not found then
    raise exception 'could not find valid entry for job ''%''', job_name;
  end if;
  return true;
end;
$$;

select is(ai_queue.setup_schedules('1.4-1'), '{"ai-tasks-retention 17 * * * *"}'::text[],
  'pg_cron without pg_net: only the retention job');
select row_eq($$select schedule, command from cron.job where jobname = 'ai-tasks-retention'$$,
  row('17 * * * *'::text, 'select public.purge_ai_queue_history()'::text),
  'the retention job runs purge_ai_queue_history hourly');
select is_empty($$select 1 from cron.job where jobname = 'ai-tasks-dispatch'$$,
  'no dispatch job without pg_net');

create schema net;
create function net.http_post(
  url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{}', timeout_milliseconds integer default 5000
) returns bigint language sql as $$ select 1::bigint $$;

select is(ai_queue.setup_schedules('1.4-1'),
  '{"ai-tasks-retention 17 * * * *","ai-tasks-dispatch * * * * *"}'::text[],
  'pg_cron 1.4 with pg_net: the dispatch job too');
select row_eq($$select schedule, command from cron.job where jobname = 'ai-tasks-dispatch'$$,
  row('* * * * *'::text, 'select ai_queue.dispatch_due_tasks()'::text),
  'on pg_cron 1.4, which knows no seconds, the dispatch job runs every minute');

select ai_queue.setup_schedules('1.6.4');
select is((select schedule from cron.job where jobname = 'ai-tasks-dispatch'), '5 seconds',
  'on pg_cron 1.6 the dispatch job runs every 5 seconds');
select ai_queue.setup_schedules('1.5');
select is((select count(*)::integer from cron.job), 2,
  're-running setup replaces the jobs instead of adding more');
select is((select schedule from cron.job where jobname = 'ai-tasks-dispatch'), '5 seconds',
  'pg_cron 1.5 is the first version given seconds');

drop schema net cascade;
select is(ai_queue.setup_schedules('1.6'),
  '{"ai-tasks-retention 17 * * * *","ai-tasks-dispatch removed"}'::text[],
  'once pg_net is gone setup removes the dispatch job');
select is_empty($$select 1 from cron.job where jobname = 'ai-tasks-dispatch'$$,
  'the dispatch job no longer exists, so it cannot fail every run');

select throws_ok($$select ai_queue.setup_schedules('latest')$$, '22023',
  'cron_version must look like 1.4 or 1.6.4, got ''latest''',
  'an unreadable version is refused with 22023');

select * from finish();
rollback;
