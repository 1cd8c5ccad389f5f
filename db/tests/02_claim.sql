-- claim_ai_task: which tasks a claim takes, in what order, and what it hands
-- back. SKIP LOCKED between sessions is proven in db/concurrency_test.ts; one
-- session cannot interleave with itself.
begin;
select plan(23);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
-- A generous running cap, so these tests see ordering, not fairness limits.
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000),
  ('a2000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 1000);

-- ---------------------------------------------------------------- empty queue
select is_empty(
  $$select * from public.claim_ai_task('worker-1')$$,
  'a claim on an empty queue returns no task');

-- ---------------------------------------------------------------- one task
insert into public.ai_tasks (id, project_id, user_id, type, payload, model, priority,
                             max_attempts)
values ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
        'a0000000-0000-4000-8000-000000000001', 'build_site', '{"page": "home"}',
        'openai/gpt-4o-mini', 7, 4);

create temp table claimed on commit drop as
  select * from public.claim_ai_task('worker-1', lease_seconds => 60);

select is((select count(*)::int from claimed), 1, 'a claim takes the one due task');
select row_eq(
  $$select id, project_id, user_id, type, payload, model, priority, attempt, max_attempts
    from claimed$$,
  row('c0000000-0000-4000-8000-000000000001'::uuid,
      'a1000000-0000-4000-8000-000000000001'::uuid,
      'a0000000-0000-4000-8000-000000000001'::uuid,
      'build_site'::text, '{"page": "home"}'::jsonb, 'openai/gpt-4o-mini'::text, 7, 1, 4),
  'the claim hands back the task''s fields and attempt 1 as its fencing token');
select is((select lease_expires_at from claimed), now() + interval '60 seconds',
  'the lease runs lease_seconds from now');
select row_eq(
  $$select status, attempts, locked_by, locked_until, started_at, finished_at
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('running'::text, 1, 'worker-1'::text, now() + interval '60 seconds', now(),
      null::timestamptz),
  'the claimed task is running under worker-1''s lease with one attempt spent');
select is_empty(
  $$select * from public.build_logs where task_id = 'c0000000-0000-4000-8000-000000000001'$$,
  'a claim writes no build log: the task row names the worker and the attempt');
select is_empty(
  $$select * from public.claim_ai_task('worker-2')$$,
  'a running task is not claimed again while its lease holds');

-- ---------------------------------------------------------------- due time
insert into public.ai_tasks (id, project_id, type, run_at)
values ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply', now() + interval '1 second');
select is_empty(
  $$select * from public.claim_ai_task('worker-1')$$,
  'a task whose run_at lies in the future is not claimed');
update public.ai_tasks set run_at = now() where id = 'c0000000-0000-4000-8000-000000000002';
select is(
  (select lease_expires_at from public.claim_ai_task('worker-1')),
  now() + interval '300 seconds',
  'a task becomes claimable once its run_at has come, under a 300 s default lease');

-- ---------------------------------------------------------------- statuses
insert into public.ai_tasks (project_id, type, status, attempts, result, finished_at)
values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'completed', 1, '{}', now()),
       ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'failed', 3, null, now()),
       ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'cancelled', 0, null, now());
select is_empty(
  $$select * from public.claim_ai_task('worker-1', batch_size => 10)$$,
  'completed, failed and cancelled tasks are never claimed');

-- ---------------------------------------------------------------- order
-- Five tasks of one project: priority first, then the earliest run_at, then
-- the oldest created_at.
insert into public.ai_tasks (id, project_id, type, priority, run_at, created_at) values
  ('d0000000-0000-4000-8000-000000000005', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 0, now() - interval '1 minute', now() - interval '1 minute'),
  ('d0000000-0000-4000-8000-000000000004', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 0, now() - interval '2 minutes', now() - interval '1 minute'),
  ('d0000000-0000-4000-8000-000000000003', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 0, now() - interval '2 minutes', now() - interval '2 minutes'),
  ('d0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 1, now(), now()),
  ('d0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 50, now(), now());

create temp table batch on commit drop as
  select row_number() over () as n, c.*
  from public.claim_ai_task('worker-1', batch_size => 3) c;
select is((select count(*)::int from batch), 3, 'a batch claim takes batch_size tasks');
select is(
  (select array_agg(id order by n) from batch),
  array['d0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000002',
        'd0000000-0000-4000-8000-000000000003']::uuid[],
  'within one project a batch comes in priority, then run_at, then created_at order');
select is(
  (select array_agg(id order by id) from public.ai_tasks
   where id::text like 'd0000000%' and status = 'queued'),
  array['d0000000-0000-4000-8000-000000000004', 'd0000000-0000-4000-8000-000000000005']::uuid[],
  'the tasks beyond batch_size stay queued');
select is(
  (select array_agg(id order by n) from (
     select row_number() over () as n, c.id
     from public.claim_ai_task('worker-1', batch_size => 5) c) x),
  array['d0000000-0000-4000-8000-000000000004', 'd0000000-0000-4000-8000-000000000005']::uuid[],
  'the next claim takes the rest, the earlier run_at first, and no more than there are');
select is(
  (select count(*)::int from public.ai_tasks
   where id::text like 'd0000000%' and status = 'running' and attempts = 1
     and locked_by = 'worker-1'),
  5, 'each task of a batch is running under the worker, one attempt spent');

-- ---------------------------------------------------------------- project filter
insert into public.ai_tasks (id, project_id, type, priority) values
  ('e0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 100),
  ('e0000000-0000-4000-8000-000000000002', 'a2000000-0000-4000-8000-000000000002',
   'chat_reply', 0),
  ('e0000000-0000-4000-8000-000000000003', 'a2000000-0000-4000-8000-000000000002',
   'chat_reply', 0);
select results_eq(
  $$select id from public.claim_ai_task('worker-1',
      project_id => 'a2000000-0000-4000-8000-000000000002', batch_size => 10) order by id$$,
  $$values ('e0000000-0000-4000-8000-000000000002'::uuid),
           ('e0000000-0000-4000-8000-000000000003'::uuid)$$,
  'a project-filtered claim takes only that project''s tasks');
select is(
  (select status from public.ai_tasks where id = 'e0000000-0000-4000-8000-000000000001'),
  'queued',
  'another project''s task stays queued, however high its priority');
select is_empty(
  $$select * from public.claim_ai_task('worker-1',
      project_id => 'a2000000-0000-4000-8000-000000000002')$$,
  'a project-filtered claim with nothing due in that project returns no task');
select is_empty(
  $$select * from public.claim_ai_task('worker-1',
      project_id => 'f0000000-0000-4000-8000-00000000dead')$$,
  'a claim filtered on an unknown project returns no task');

-- ---------------------------------------------------------------- across projects
-- Only the set is asserted here: the order of a batch spanning projects is
-- the fairness policy's business.
insert into public.ai_tasks (id, project_id, type) values
  ('e0000000-0000-4000-8000-000000000004', 'a2000000-0000-4000-8000-000000000002',
   'chat_reply');
select results_eq(
  $$select id from public.claim_ai_task('worker-1', batch_size => 10) order by id$$,
  $$values ('e0000000-0000-4000-8000-000000000001'::uuid),
           ('e0000000-0000-4000-8000-000000000004'::uuid)$$,
  'an unfiltered batch takes due tasks of every project');
select is(
  (select count(*)::int from public.ai_tasks where status = 'queued'), 0,
  'nothing due is left behind');

-- ---------------------------------------------------------------- history shape
insert into public.ai_tasks (id, project_id, type) values
  ('e0000000-0000-4000-8000-000000000005', 'a2000000-0000-4000-8000-000000000002',
   'chat_reply');
select is(
  (select history from public.claim_ai_task('worker-1')),
  '[]'::jsonb,
  'a task of a project without messages comes with an empty history array');
select is(
  (select count(*)::int from public.ai_tasks
   where status = 'running' and locked_by = 'worker-1'),
  (select count(*)::int from public.ai_tasks where status = 'running'),
  'every running task is held by the worker that claimed it');

select * from finish();
rollback;
