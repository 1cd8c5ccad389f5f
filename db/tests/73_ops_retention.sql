-- Retention: purge_ai_queue_history deletes finished tasks and build logs
-- older than the configured ages, at most retention_batch_size of each per
-- run, and pg_cron's run log; it keeps live tasks, recent rows and the chat.
begin;
select plan(20);

-- Only this file's rows, so every count below is exact.
delete from public.ai_tasks;
delete from public.build_logs;

insert into auth.users (id, email) values
  ('73000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id) values
  ('73100000-0000-4000-8000-000000000001', '73000000-0000-4000-8000-000000000001');

-- Inserts a task in the given state that finished `age` ago (null: not finished).
create function pg_temp.task(id uuid, status text, age interval) returns void
language sql as $$
  insert into public.ai_tasks (id, project_id, type, status, attempts, result,
                               started_at, finished_at, created_at,
                               locked_by, locked_until)
  values (id, '73100000-0000-4000-8000-000000000001', 'chat_reply', status,
          case when status in ('queued', 'cancelled') then 0 else 1 end,
          case when status = 'completed' then '{}'::jsonb end,
          case when status in ('completed', 'failed', 'running') then now() - age end,
          case when status in ('completed', 'failed', 'cancelled') then now() - age end,
          now() - coalesce(age, interval '0') - interval '1 minute',
          case when status = 'running' then 'w' end,
          case when status = 'running' then now() + interval '5 minutes' end)
$$;

select pg_temp.task('73200000-0000-4000-8000-000000000001', 'completed', interval '31 days');
select pg_temp.task('73200000-0000-4000-8000-000000000002', 'failed', interval '40 days');
select pg_temp.task('73200000-0000-4000-8000-000000000003', 'cancelled', interval '90 days');
select pg_temp.task('73200000-0000-4000-8000-000000000004', 'completed', interval '29 days');
select pg_temp.task('73200000-0000-4000-8000-000000000005', 'queued', interval '60 days');
select pg_temp.task('73200000-0000-4000-8000-000000000006', 'running', interval '45 days');

-- The old completed task's conversation.
insert into public.chat_messages (project_id, role, content, task_id, created_at) values
  ('73100000-0000-4000-8000-000000000001', 'assistant', 'old answer',
   '73200000-0000-4000-8000-000000000001', now() - interval '31 days');

insert into public.build_logs (project_id, log_type, message, created_at)
select '73100000-0000-4000-8000-000000000001', 'info', 'log ' || d, now() - make_interval(days => d)
from unnest(array[2, 29, 31, 45]) d;

-- pg_cron's run log (a stand-in: pg_cron lives only in database postgres).
create schema cron;
create table cron.job_run_details (
  runid bigserial primary key, jobid bigint, status text, start_time timestamptz,
  end_time timestamptz);
insert into cron.job_run_details (jobid, status, start_time, end_time)
select 1, 'succeeded', now() - age, now() - age + interval '1 second'
from unnest(array[interval '5 days', interval '4 days', interval '1 hour']) age;

-- ================================================================ defaults: 30/30/3 days
select is(public.purge_ai_queue_history(),
  '{"tasks": 3, "build_logs": 2, "cron_runs": 2}'::jsonb,
  'with the default ages a run deletes 3 old finished tasks, 2 old logs, 2 old cron runs');
select set_eq($$select id from public.ai_tasks$$,
  array['73200000-0000-4000-8000-000000000004', '73200000-0000-4000-8000-000000000005',
        '73200000-0000-4000-8000-000000000006']::uuid[],
  'a recent finished task and the live ones, however old, are kept');
select set_eq($$select message from public.build_logs where task_id is null$$,
  array['log 2', 'log 29'], 'build logs younger than 30 days are kept');
select is((select count(*)::integer from cron.job_run_details), 1,
  'the cron run of an hour ago is kept');
select row_eq($$select content, task_id from public.chat_messages where content = 'old answer'$$,
  row('old answer'::text, null::uuid),
  'the deleted task''s reply stays in the chat, no longer linked to the task');
select is(public.purge_ai_queue_history(),
  '{"tasks": 0, "build_logs": 0, "cron_runs": 0}'::jsonb,
  'a second run finds nothing left to delete');

-- ================================================================ configured ages
update ai_queue.ops_settings set
  finished_task_retention = interval '1 day',
  build_log_retention = null,
  cron_history_retention = interval '10 minutes';
select is(public.purge_ai_queue_history(),
  '{"tasks": 1, "build_logs": 0, "cron_runs": 1}'::jsonb,
  'shorter ages delete more; a null age keeps build logs forever');
select is((select count(*)::integer from public.build_logs where message like 'log %'), 2,
  'no build log was deleted under a null age');

-- ================================================================ batches
update ai_queue.ops_settings set retention_batch_size = 100, build_log_retention = '1 day';
insert into public.ai_tasks (project_id, type, status, attempts, result, started_at,
                             finished_at)
select '73100000-0000-4000-8000-000000000001', 'chat_reply', 'completed', 1, '{}',
       now() - interval '3 days' - make_interval(secs => i),
       now() - interval '3 days' + make_interval(secs => i)
from generate_series(1, 150) i;
select is((public.purge_ai_queue_history() ->> 'tasks')::integer, 100,
  'one run deletes at most retention_batch_size tasks');
select is((public.purge_ai_queue_history() ->> 'tasks')::integer, 50,
  'the next run deletes the rest');
select is((select min(finished_at) from public.ai_tasks where status = 'completed'), null,
  'oldest first: nothing finished is left');

-- ================================================================ settings guard their ranges
select throws_ok(
  $$update ai_queue.ops_settings set finished_task_retention = interval '5 minutes'$$,
  '23514', null, 'a task retention under an hour is refused');
select throws_ok($$update ai_queue.ops_settings set retention_batch_size = 0$$,
  '23514', null, 'a batch size under 100 is refused');
select throws_ok($$insert into ai_queue.ops_settings (id) values (false)$$,
  '23514', null, 'there is only ever one settings row');

-- ================================================================ privileges
set local role authenticated;
select throws_ok($$select public.purge_ai_queue_history()$$, '42501', null,
  'a signed-in user cannot purge');
select throws_ok($$select runner_key from ai_queue.ops_settings$$, '42501', null,
  'a signed-in user cannot read the settings, where a runner key may live');
reset role;
set local role service_role;
select lives_ok($$select public.purge_ai_queue_history()$$, 'the service role can purge');
select lives_ok(
  $$update ai_queue.ops_settings set build_log_retention = interval '90 days'$$,
  'the service role can tune retention');
select throws_ok($$select runner_key from ai_queue.ops_settings$$, '42501', null,
  'the service role cannot read the runner key');
select throws_ok($$update ai_queue.ops_settings set runner_url = 'https://elsewhere.test'$$,
  '42501', null, 'nor send the wake-up calls elsewhere');
reset role;

select * from finish();
rollback;
