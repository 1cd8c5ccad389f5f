-- Leases and fencing: a worker keeps a task only while its lease runs; once
-- it expires the task is reaped (by the reaper or by the next claim) and the
-- old holder's writes are refused, whatever order things happen in.
begin;
select plan(41);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);

-- Moves a task's lease into the past, as if its worker stopped renewing it.
create function pg_temp.expire_lease(task uuid) returns void
language sql as $$
  update public.ai_tasks set locked_until = now() - interval '1 second' where id = task
$$;

-- ---------------------------------------------------------------- extending
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-old', lease_seconds => 30); end $$;

select ok(public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000001', 1, 600),
  'the holder can extend its lease');
select is(
  (select locked_until from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'),
  now() + interval '600 seconds', 'the extended lease runs lease_seconds from now');
select is(public.reap_expired_ai_tasks(), 0, 'the reaper leaves a live lease alone');

-- ---------------------------------------------------------------- takeover by a claim
select pg_temp.expire_lease('c0000000-0000-4000-8000-000000000001');
select results_eq(
  $$select id, attempt from public.claim_ai_task('worker-new')$$,
  $$values ('c0000000-0000-4000-8000-000000000001'::uuid, 2)$$,
  'a claim takes over a task whose lease expired, as the next attempt');
select row_eq(
  $$select status, locked_by, attempts from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('running'::text, 'worker-new'::text, 2),
  'the new worker holds the task now');
select is(
  (select errors -> 0 ->> 'error' from public.ai_tasks
   where id = 'c0000000-0000-4000-8000-000000000001'),
  'lease expired', 'the lost attempt is recorded in the error history');

-- The old holder comes back and tries everything; nothing gets through.
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'stale')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000001 is not held by attempt 1: it is running at attempt 2',
  'the old holder''s completion is refused with AQ001');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'stale')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000001 is not held by attempt 1: it is running at attempt 2',
  'the old holder''s failure is refused with AQ001');
select ok(not public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000001', 1),
  'the old holder cannot extend the lease it lost');
select ok(not public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1, 'st'),
  'the old holder cannot stream a reply');
select ok(not public.release_ai_task('c0000000-0000-4000-8000-000000000001', 1),
  'the old holder cannot release the task');
select row_eq(
  $$select status, locked_by, attempts, jsonb_array_length(errors), error is not null
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('running'::text, 'worker-new'::text, 2, 1, true),
  'the refused calls changed nothing: still running under the new worker');
select is(
  (select count(*)::int from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000001'),
  0, 'the refused calls wrote no message');

select isnt(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 2, 'fresh'),
  null, 'the new holder completes the task');
select is(
  (select content from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000001'),
  'fresh', 'the answer is the new holder''s');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'stale')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000001 is not held by attempt 1: it is completed at attempt 2',
  'after the completion the old holder is still refused');

-- ---------------------------------------------------------------- the reaper
insert into public.ai_tasks (id, project_id, type, max_attempts) values
  ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 2),
  ('c0000000-0000-4000-8000-000000000003', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 1);
do $$ begin perform public.claim_ai_task('worker-old', batch_size => 2); end $$;
select pg_temp.expire_lease('c0000000-0000-4000-8000-000000000002');
select pg_temp.expire_lease('c0000000-0000-4000-8000-000000000003');

select is(public.reap_expired_ai_tasks(), 2, 'the reaper hands back both expired leases');
select row_eq(
  $$select status, attempts, locked_by, locked_until, run_at, finished_at, error
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000002'$$,
  row('queued'::text, 1, null::text, null::timestamptz, now(), null::timestamptz,
      'lease of attempt 1 expired: worker worker-old stopped renewing it'::text),
  'a task with attempts left is queued again at once, its attempt spent');
select row_eq(
  $$select status, attempts, locked_by, finished_at
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000003'$$,
  row('failed'::text, 1, null::text, now()),
  'a task whose expired lease was its last attempt ends failed');
select is(
  (select message from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000003'
     and metadata ->> 'event' = 'lease_expired'),
  'task failed: lease of attempt 1 expired: worker worker-old stopped renewing it, '
    || 'and it was the last of 1 attempts',
  'the reaped last attempt is logged as the failure');
select is(
  (select log_type || ' ' || (metadata ->> 'worker') from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000002'
     and metadata ->> 'event' = 'lease_expired'),
  'warning worker-old', 'a requeued lease is logged as a warning naming the worker');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000003', 1, 'late')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000003 is not held by attempt 1: it is failed at attempt 1',
  'a worker whose last lease was reaped cannot complete the task after all');
select is(public.reap_expired_ai_tasks(), 0, 'reaping again finds nothing');

-- The requeued task's old holder reports a failure before anyone reclaimed it.
-- (fail_ai_task answers with the current status here, taking the reaper's
-- entry for its own earlier report; what matters is that nothing changes.)
create temp table before_late_fail on commit drop as
  select t.* from public.ai_tasks t where t.id = 'c0000000-0000-4000-8000-000000000002';
do $$ begin
  perform public.fail_ai_task('c0000000-0000-4000-8000-000000000002', 1, 'late report');
end $$;
select is(
  (select t::text from public.ai_tasks t where t.id = 'c0000000-0000-4000-8000-000000000002'),
  (select b::text from before_late_fail b),
  'a late failure from the holder of a reaped lease changes nothing');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000002', 1, 'late')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000002 is not held by attempt 1: it is queued at attempt 1',
  'nor can that holder complete the requeued task');

-- The claim reaps too, and fails a task whose last lease expired.
insert into public.ai_tasks (id, project_id, type, max_attempts, priority) values
  ('c0000000-0000-4000-8000-000000000004', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 1, -100);
update public.ai_tasks set run_at = now() + interval '1 hour'
where id = 'c0000000-0000-4000-8000-000000000002';
do $$ begin
  perform public.claim_ai_task('worker-old');
  perform pg_temp.expire_lease('c0000000-0000-4000-8000-000000000004');
end $$;
select is_empty($$select * from public.claim_ai_task('worker-new')$$,
  'a claim finds nothing to hand out when the only expired lease was the last attempt');
select is(
  (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000004'),
  'failed', 'but the claim did reap it, to failed');

-- ---------------------------------------------------------------- release
insert into public.ai_tasks (id, project_id, type, priority) values
  ('c0000000-0000-4000-8000-000000000005', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 100);
create temp table first_claim on commit drop as
  select * from public.claim_ai_task('worker-old');
select ok(public.release_ai_task('c0000000-0000-4000-8000-000000000005',
                                 (select attempt from first_claim)),
  'the holder can release its task');
select row_eq(
  $$select status, locked_by, locked_until, run_at, finished_at
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000005'$$,
  row('queued'::text, null::text, null::timestamptz, now(), null::timestamptz),
  'a released task is queued and due at once, without a lease');
select is(
  (select max_attempts - attempts from public.ai_tasks
   where id = 'c0000000-0000-4000-8000-000000000005'),
  3, 'the release gives the attempt back: all three attempts are still left');
select is(
  (select log_type || ': ' || message || ' ' || (metadata ->> 'worker') from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000005' order by id desc limit 1),
  'info: task released by worker-old; attempt 1 was not spent worker-old',
  'the release is logged, naming the worker');
select ok(not public.release_ai_task('c0000000-0000-4000-8000-000000000005',
                                     (select attempt from first_claim)),
  'releasing twice returns false the second time');

-- Another worker claims the released task; the first worker's stale token
-- (a retried release, a late completion) must not reach it.
create temp table second_claim on commit drop as
  select * from public.claim_ai_task('worker-new');
select is((select id from second_claim), 'c0000000-0000-4000-8000-000000000005'::uuid,
  'the released task is claimed by the next worker');
select isnt((select attempt from second_claim), (select attempt from first_claim),
  'the new claim carries a fencing token different from the released one');
select ok(not public.release_ai_task('c0000000-0000-4000-8000-000000000005',
                                     (select attempt from first_claim)),
  'a repeated release from the first worker does not take the task from the second');
select ok(not public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000005',
                                          (select attempt from first_claim)),
  'the first worker cannot extend the second worker''s lease');
select throws_like(
  format($$select public.complete_ai_task('c0000000-0000-4000-8000-000000000005', %s, 'x')$$,
         (select attempt from first_claim)),
  '% is not held by attempt %',
  'the first worker cannot complete the task the second one holds');
select row_eq(
  $$select status, locked_by from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-000000000005'$$,
  row('running'::text, 'worker-new'::text),
  'the second worker still holds the task');
select isnt(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000005',
                          (select attempt from second_claim), 'done'),
  null, 'the second worker completes it');

-- ---------------------------------------------------------------- a cancelled task
insert into public.ai_tasks (id, project_id, type, priority) values
  ('c0000000-0000-4000-8000-000000000006', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 100);
do $$ begin perform public.claim_ai_task('worker-old'); end $$;
do $$ begin perform public.cancel_ai_task('c0000000-0000-4000-8000-000000000006'); end $$;
select ok(not public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000006', 1),
  'extending the lease of a cancelled task returns false: the worker should stop');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-000000000006', 1, 'x')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000006 is not held by attempt 1: it is cancelled at attempt 1',
  'a worker cannot fail a task that was cancelled under it');

select * from finish();
rollback;
