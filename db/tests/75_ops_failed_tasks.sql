-- Failed tasks for an operator: list_failed_ai_tasks shows them newest first
-- with their error history; retry_failed_ai_tasks queues them again in bulk
-- with retry_ai_task's semantics (attempts keep counting, max_attempts grows,
-- history kept) and says how many.
begin;
select plan(22);

delete from public.ai_tasks;

insert into auth.users (id, email) values
  ('75000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id) values
  ('75100000-0000-4000-8000-000000000001', '75000000-0000-4000-8000-000000000001'),
  ('75100000-0000-4000-8000-000000000002', '75000000-0000-4000-8000-000000000001');

-- A task of project `project` that failed `ago` ago after `tries` attempts,
-- each recorded in its error history.
create function pg_temp.failed(id uuid, project integer, ago interval, tries integer)
returns void
language sql as $$
  insert into public.ai_tasks (id, project_id, type, status, attempts, max_attempts, error,
                               errors, started_at, finished_at)
  select id, ('75100000-0000-4000-8000-00000000000' || project)::uuid, 'chat_reply',
         'failed', tries, tries, 'error ' || tries,
         jsonb_agg(jsonb_build_object('attempt', a, 'error', 'error ' || a,
                                      'retryable', true, 'worker', 'w', 'at', now() - ago)
                   order by a),
         now() - ago, now() - ago
  from generate_series(1, tries) a
$$;

select pg_temp.failed('75200000-0000-4000-8000-000000000001', 1, interval '2 hours', 3);
select pg_temp.failed('75200000-0000-4000-8000-000000000002', 1, interval '10 minutes', 1);
select pg_temp.failed('75200000-0000-4000-8000-000000000003', 2, interval '5 minutes', 2);
insert into public.ai_tasks (project_id, type, status, finished_at) values
  ('75100000-0000-4000-8000-000000000001', 'chat_reply', 'cancelled', now());

-- ================================================================ listing
select results_eq($$select id from public.list_failed_ai_tasks()$$,
  $$values ('75200000-0000-4000-8000-000000000003'::uuid),
           ('75200000-0000-4000-8000-000000000002'::uuid),
           ('75200000-0000-4000-8000-000000000001'::uuid)$$,
  'every failed task is listed, newest failure first; cancelled ones are not');
select results_eq(
  $$select id from public.list_failed_ai_tasks('75100000-0000-4000-8000-000000000001')$$,
  $$values ('75200000-0000-4000-8000-000000000002'::uuid),
           ('75200000-0000-4000-8000-000000000001'::uuid)$$,
  'a project''s list holds only its own failed tasks');
select results_eq($$select id from public.list_failed_ai_tasks(max_tasks => 1)$$,
  $$values ('75200000-0000-4000-8000-000000000003'::uuid)$$,
  'max_tasks limits the list to the newest');
select results_eq(
  $$select id from public.list_failed_ai_tasks(since => now() - interval '1 hour')$$,
  $$values ('75200000-0000-4000-8000-000000000003'::uuid),
           ('75200000-0000-4000-8000-000000000002'::uuid)$$,
  'since leaves out older failures');
select is(
  (select jsonb_path_query_array(errors, '$[*].error') from public.list_failed_ai_tasks()
   where id = '75200000-0000-4000-8000-000000000001'),
  '["error 1", "error 2", "error 3"]'::jsonb,
  'each task comes with its whole error history, oldest first');
select row_eq(
  $$select error, attempts, max_attempts from public.list_failed_ai_tasks()
    where id = '75200000-0000-4000-8000-000000000001'$$,
  row('error 3'::text, 3, 3), 'and with its last error and attempt counts');
select throws_ok($$select * from public.list_failed_ai_tasks(max_tasks => 0)$$, '22023',
  'max_tasks must be between 1 and 10000, got 0', 'a bad max_tasks is refused');

-- ================================================================ retrying
select is(public.retry_failed_ai_tasks('75100000-0000-4000-8000-000000000001'), 2,
  'retrying a project''s failed tasks reports two');
select results_eq(
  $$select id, status, attempts, max_attempts, jsonb_array_length(errors), finished_at
    from public.ai_tasks where status <> 'cancelled' order by id$$,
  $$values ('75200000-0000-4000-8000-000000000001'::uuid, 'queued'::text, 3, 6, 3,
            null::timestamptz),
           ('75200000-0000-4000-8000-000000000002'::uuid, 'queued'::text, 1, 4, 1,
            null::timestamptz),
           ('75200000-0000-4000-8000-000000000003'::uuid, 'failed'::text, 2, 2, 2,
            now() - interval '5 minutes')$$,
  'they are queued again with attempts kept, three more allowed and history kept; '
  'the other project''s task is untouched');
select is(
  (select count(*)::integer from public.build_logs
   where metadata ->> 'event' = 'retried' and task_id in (
     '75200000-0000-4000-8000-000000000001', '75200000-0000-4000-8000-000000000002')),
  2, 'each retry is logged as retry_ai_task logs it');
select results_eq($$select id, attempt from public.claim_ai_task('w9', batch_size => 5)
                   order by id$$,
  $$values ('75200000-0000-4000-8000-000000000001'::uuid, 4),
           ('75200000-0000-4000-8000-000000000002'::uuid, 2)$$,
  'the retried tasks can be claimed again, each with a fresh attempt number');

select is(public.retry_failed_ai_tasks(), 1, 'retrying everything now finds one');
select is(public.retry_failed_ai_tasks(), 0, 'and a second run finds none');

select pg_temp.failed('75200000-0000-4000-8000-000000000004', 2, interval '3 days', 1);
select pg_temp.failed('75200000-0000-4000-8000-000000000005', 2, interval '1 minute', 1);
select is(public.retry_failed_ai_tasks(since => now() - interval '1 hour',
                                       extra_attempts => 5), 1,
  'since limits the retry to recent failures');
select row_eq($$select status, max_attempts from public.ai_tasks
               where id = '75200000-0000-4000-8000-000000000005'$$,
  row('queued'::text, 6), 'extra_attempts sets how many more attempts it gets');
select is((select status from public.ai_tasks
           where id = '75200000-0000-4000-8000-000000000004'), 'failed',
  'the older failure stays failed');
select is(public.retry_failed_ai_tasks(max_tasks => 1), 1,
  'max_tasks limits one bulk retry');

-- ================================================================ waking the runner
select pg_temp.failed('75200000-0000-4000-8000-000000000006', 2, interval '1 minute', 1);
select pg_temp.failed('75200000-0000-4000-8000-000000000007', 2, interval '1 minute', 1);
create schema net;
create table net.calls (body jsonb);
create function net.http_post(
  url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{}', timeout_milliseconds integer default 5000
) returns bigint language sql as $$ insert into net.calls values (body); select 1::bigint $$;
update ai_queue.ops_settings set runner_url = 'https://ref.supabase.co/functions/v1/process-ai-tasks';
select is(public.retry_failed_ai_tasks(), 2, 'a bulk retry with pg_net present');
select results_eq($$select body from net.calls$$,
  $$values ('{"trigger": "schedule", "due": 2}'::jsonb)$$,
  'wakes the runner once, saying how many tasks it queued');

-- ================================================================ bad input and privileges
select throws_ok($$select public.retry_failed_ai_tasks(extra_attempts => 0)$$, '22023',
  'extra_attempts must be between 1 and 25, got 0', 'a bad extra_attempts is refused');
set local role authenticated;
set local request.jwt.claims = '{"sub": "75000000-0000-4000-8000-000000000001", "role": "authenticated"}';
select throws_ok($$select public.retry_failed_ai_tasks('75100000-0000-4000-8000-000000000001')$$,
  '42501', null, 'even a project''s owner cannot bulk-retry: that is the service''s tool');
select throws_ok($$select * from public.list_failed_ai_tasks()$$, '42501', null,
  'a signed-in user cannot list failed tasks of all projects');
reset role;

select * from finish();
rollback;
