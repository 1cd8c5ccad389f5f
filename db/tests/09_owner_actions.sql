-- What a project's owner does through the API: enqueue a task (with their
-- message), cancel it, and retry it once it failed or was cancelled. Each
-- call runs as the signed-in owner, the way PostgREST would run it.
begin;
select plan(30);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);

set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

-- ---------------------------------------------------------------- enqueue
create temp table queued on commit drop as
  select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', 'refactor_code',
           '{"file": "main.ts"}', 'Tidy this up', 'openai/gpt-4o', 20, 5) as id;
select isnt((select id from queued), null, 'enqueue returns the new task''s id');
select row_eq(
  $$select t.project_id, t.user_id, t.type, t.payload - 'message_id', t.model, t.priority,
           t.max_attempts, t.status, t.attempts
    from public.ai_tasks t join queued q using (id)$$,
  row('a1000000-0000-4000-8000-000000000001'::uuid,
      'a0000000-0000-4000-8000-000000000001'::uuid, 'refactor_code'::text,
      '{"file": "main.ts"}'::jsonb, 'openai/gpt-4o'::text, 20, 5, 'queued'::text, 0),
  'the task is queued in the owner''s name with the arguments given');
select row_eq(
  $$select m.role, m.content, m.task_id from public.chat_messages m
    join public.ai_tasks t on (t.payload ->> 'message_id')::uuid = m.id
    join queued q on q.id = t.id$$,
  row('user'::text, 'Tidy this up'::text, null::uuid),
  'the message is stored as the user''s and the payload points at it');
select is(
  (select message from public.build_logs b join queued q on b.task_id = q.id),
  'refactor_code task queued', 'queueing is logged');
select isnt(public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001'), null,
  'enqueue needs nothing but the project');
select is(
  (select count(*)::int from public.chat_messages), 1,
  'a task queued without a message adds no message');

-- ---------------------------------------------------------------- cancel
select is(public.cancel_ai_task((select id from queued)), 'cancelled',
  'the owner cancels a queued task');
select row_eq(
  $$select t.status, t.finished_at from public.ai_tasks t join queued q using (id)$$,
  row('cancelled'::text, now()), 'the cancelled task is finished now');
select is(
  (select b.metadata from public.build_logs b join queued q on b.task_id = q.id
   where b.metadata ->> 'event' = 'cancelled'),
  '{"by": "a0000000-0000-4000-8000-000000000001", "event": "cancelled",
    "previous_status": "queued"}'::jsonb,
  'the log says who cancelled the task and from what state');
select is(public.cancel_ai_task((select id from queued)), 'cancelled',
  'cancelling a cancelled task again is a no-op that returns cancelled');
select is(
  (select count(*)::int from public.build_logs b join queued q on b.task_id = q.id
   where b.metadata ->> 'event' = 'cancelled'),
  1, 'the repeated cancel writes no second log');

-- ---------------------------------------------------------------- retry a cancelled task
select is(public.retry_ai_task((select id from queued), 2), 'queued',
  'the owner retries a cancelled task');
select row_eq(
  $$select t.status, t.max_attempts, t.finished_at, t.run_at
    from public.ai_tasks t join queued q using (id)$$,
  row('queued'::text, 2, null::timestamptz, now()),
  'it is due now with extra_attempts attempts beyond those spent');

-- ---------------------------------------------------------------- a running task
reset role;
reset request.jwt.claims;
do $$ begin
  perform public.claim_ai_task('worker-1', batch_size => 10,
    project_id => 'a1000000-0000-4000-8000-000000000001');
end $$;
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

select is(public.cancel_ai_task((select id from queued)), 'cancelled',
  'the owner cancels a running task');
select row_eq(
  $$select t.status, t.locked_by, t.locked_until, t.attempts
    from public.ai_tasks t join queued q using (id)$$,
  row('cancelled'::text, null::text, null::timestamptz, 1),
  'the cancelled task has no lease any more');
reset role;
reset request.jwt.claims;
select throws_ok(
  format('select public.complete_ai_task(%L, 1, %L)', (select id from queued), 'late answer'),
  'AQ001',
  format('task %s is not held by attempt 1: it is cancelled at attempt 1', (select id from queued)),
  'the worker that held the cancelled task cannot complete it');
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

-- ---------------------------------------------------------------- retry a failed task
reset role;
reset request.jwt.claims;
insert into public.ai_tasks (id, project_id, type, status, attempts, max_attempts, error,
                             errors, started_at, finished_at)
values ('c0000000-0000-4000-8000-000000000009', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply', 'failed', 3, 3, 'boom', '[{"attempt": 3, "error": "boom"}]',
        now() - interval '1 minute', now());
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

select is(public.retry_ai_task('c0000000-0000-4000-8000-000000000009'), 'queued',
  'the owner retries a failed task');
select row_eq(
  $$select status, attempts, max_attempts, error, started_at, finished_at, errors
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000009'$$,
  row('queued'::text, 3, 6, null::text, null::timestamptz, null::timestamptz,
      '[{"attempt": 3, "error": "boom"}]'::jsonb),
  'three fresh attempts, the error cleared, the error history kept');
reset role;
reset request.jwt.claims;
select is(
  (select attempt from public.claim_ai_task('worker-1',
     project_id => 'a1000000-0000-4000-8000-000000000001')),
  4, 'the retried task''s next attempt is 4: fencing tokens never repeat');
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

-- ---------------------------------------------------------------- illegal moves
select throws_ok(
  $$select public.retry_ai_task('c0000000-0000-4000-8000-000000000009')$$,
  'AQ003',
  'task c0000000-0000-4000-8000-000000000009 is running: only failed or cancelled tasks can be retried',
  'a running task cannot be retried');
reset role;
reset request.jwt.claims;
do $$ begin
  perform public.complete_ai_task('c0000000-0000-4000-8000-000000000009', 4, 'done');
end $$;
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';
select throws_ok(
  $$select public.cancel_ai_task('c0000000-0000-4000-8000-000000000009')$$,
  'AQ003',
  'task c0000000-0000-4000-8000-000000000009 is completed: only queued or running tasks can be cancelled',
  'a completed task cannot be cancelled');
select throws_ok(
  $$select public.retry_ai_task('c0000000-0000-4000-8000-000000000009')$$,
  'AQ003',
  'task c0000000-0000-4000-8000-000000000009 is completed: only failed or cancelled tasks can be retried',
  'a completed task cannot be retried');
select is(
  (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000009'),
  'completed', 'the refused moves left the task completed');

-- ---------------------------------------------------------------- who is asking
set local request.jwt.claims = '{"role": "authenticated"}';
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001')$$,
  '42501', 'authenticated caller has no user id (request.jwt.claims.sub)',
  'a signed-in role without a user id cannot enqueue');
select throws_ok(
  $$select public.cancel_ai_task('c0000000-0000-4000-8000-000000000009')$$,
  '42501', 'authenticated caller has no user id (request.jwt.claims.sub)',
  'a signed-in role without a user id cannot cancel');
set local request.jwt.claims =
  '{"sub": "e0000000-0000-4000-8000-00000000000e", "role": "authenticated"}';
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001')$$,
  'AQ002', 'project a1000000-0000-4000-8000-000000000001 not found',
  'a user who owns nothing cannot enqueue into the project');
reset role;
reset request.jwt.claims;

-- ---------------------------------------------------------------- the service
select isnt(public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', message => 'Hi'),
  null, 'the service (no user id) enqueues for any project');
select is(
  (select t.user_id from public.ai_tasks t
   join public.chat_messages m on m.id = (t.payload ->> 'message_id')::uuid
   where m.content = 'Hi'),
  null, 'a task the service queued belongs to no user');
select is(
  public.cancel_ai_task((select t.id from public.ai_tasks t
                         where t.status = 'queued' order by t.id limit 1)),
  'cancelled', 'the service cancels any task');
select is(
  (select metadata ->> 'by' from public.build_logs
   where metadata ->> 'event' = 'cancelled' order by id desc limit 1),
  'service', 'the log says the service cancelled it');

select * from finish();
rollback;
