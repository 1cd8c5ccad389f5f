-- fail_ai_task and the backoff behind it: a failed attempt is queued again
-- after a capped, jittered delay (or exactly after a provider's Retry-After),
-- and the last attempt, or an error that is not retryable, ends `failed`.
begin;
select plan(31);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);

-- ---------------------------------------------------------------- backoff curve
-- 300 draws per attempt: the bounds hold for each, and the jitter really varies.
create temp table delays on commit drop as
  select a.attempt, extract(epoch from ai_queue.retry_delay(a.attempt)) as secs
  from unnest(array[1, 2, 3, 7, 8, 12, 5000]) a(attempt), generate_series(1, 300);

select ok((select min(secs) >= 5 and max(secs) <= 6.25 from delays where attempt = 1),
  'the first retry waits 5 to 6.25 s');
select ok((select min(secs) >= 10 and max(secs) <= 12.5 from delays where attempt = 2),
  'the second retry waits twice as long, 10 to 12.5 s');
select ok((select min(secs) >= 20 and max(secs) <= 25 from delays where attempt = 3),
  'the third waits 20 to 25 s');
select ok((select min(secs) >= 320 and max(secs) <= 400 from delays where attempt = 7),
  'the seventh waits 320 to 400 s, still below the cap');
select ok((select min(secs) >= 600 and max(secs) <= 750 from delays where attempt = 8),
  'from the eighth the base is capped at 600 s, stretched by at most a quarter');
select ok((select min(secs) >= 600 and max(secs) <= 750 from delays where attempt = 12),
  'a later attempt stays within the capped range');
select ok((select min(secs) >= 600 and max(secs) <= 750 from delays where attempt = 5000),
  'the delay stays capped however many attempts a task has had');
select cmp_ok((select count(distinct secs)::int from delays where attempt = 1), '>', 100,
  'the jitter spreads tasks failed together over different instants');
select cmp_ok((select count(distinct secs)::int from delays where attempt = 8), '>', 100,
  'the capped delay is jittered too');

-- ---------------------------------------------------------------- a retryable failure
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-1'); end $$;

select is(
  public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, '  provider timed out  '),
  'queued', 'a retryable failure with attempts left returns queued');
select row_eq(
  $$select status, attempts, error, locked_by, locked_until, finished_at
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('queued'::text, 1, 'provider timed out'::text, null::text, null::timestamptz,
      null::timestamptz),
  'the task is queued again, attempt spent, error trimmed, lease cleared');
select ok(
  (select run_at between now() + interval '5 seconds' and now() + interval '6.25 seconds'
   from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'),
  'the first retry is due 5 to 6.25 s from now');
select is(
  (select errors from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'),
  jsonb_build_array(jsonb_build_object('attempt', 1, 'error', 'provider timed out',
    'retryable', true, 'worker', 'worker-1', 'at', now())),
  'the error history records the attempt, the error and the worker');
select is(
  (select log_type || ': ' || (metadata ->> 'event') || ' by ' || (metadata ->> 'worker')
   from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001'
   order by id desc limit 1),
  'warning: retry_scheduled by worker-1',
  'a scheduled retry is logged as a warning naming the worker');
select is_empty(
  $$select * from public.claim_ai_task('worker-2')$$,
  'the failed task is not claimed before its backoff has passed');

-- The backoff grows: the second failure waits 10 to 12.5 s.
update public.ai_tasks set run_at = now() where id = 'c0000000-0000-4000-8000-000000000001';
select is((select attempt from public.claim_ai_task('worker-2')), 2,
  'once due the task is claimed again as attempt 2');
select is(public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 2, 'timed out again'),
  'queued', 'attempt 2 of 3 is queued again');
select ok(
  (select run_at between now() + interval '10 seconds' and now() + interval '12.5 seconds'
   from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'),
  'the second retry is due 10 to 12.5 s from now');

-- ---------------------------------------------------------------- the last attempt
update public.ai_tasks set run_at = now() where id = 'c0000000-0000-4000-8000-000000000001';
do $$ begin perform public.claim_ai_task('worker-3'); end $$;
select is(
  public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 3, 'still down',
                      retry_after_seconds => 30),
  'failed', 'a failure of the last attempt ends the task failed, Retry-After or not');
select row_eq(
  $$select status, attempts, finished_at, run_at, jsonb_array_length(errors)
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('failed'::text, 3, now(), now(), 3),
  'the failed task is finished now with three errors recorded');
select is(
  (select message from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001' and log_type = 'error'),
  'task failed after 3 attempts: still down',
  'the final failure is logged as an error with the attempt count');

-- ---------------------------------------------------------------- idempotent repeat
select is(public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 3, 'still down'),
  'failed', 'repeating the last failure returns the same status');
select is(
  (select jsonb_array_length(errors) from public.ai_tasks
   where id = 'c0000000-0000-4000-8000-000000000001'),
  3, 'the repeat records no second error');
select is(
  (select count(*)::int from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001' and log_type = 'error'),
  1, 'the repeat writes no second log');

-- ---------------------------------------------------------------- not retryable
insert into public.ai_tasks (id, project_id, type, max_attempts) values
  ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 5);
do $$ begin perform public.claim_ai_task('worker-1'); end $$;
select is(
  public.fail_ai_task('c0000000-0000-4000-8000-000000000002', 1, 'prompt too long',
                      retryable => false),
  'failed', 'an error that is not retryable fails the task at once, attempts left or not');
select is(
  (select message from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000002' and log_type = 'error'),
  'task failed: prompt too long', 'the log names the error');

-- ---------------------------------------------------------------- Retry-After
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000003', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply'),
  ('c0000000-0000-4000-8000-000000000004', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-1', batch_size => 2); end $$;
select is(
  public.fail_ai_task('c0000000-0000-4000-8000-000000000003', 1, '429',
                      retry_after_seconds => 42),
  'queued', 'a failure with Retry-After is queued again');
select is(
  (select run_at from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000003'),
  now() + interval '42 seconds', 'Retry-After sets the exact due time, without jitter');
select is(
  public.fail_ai_task('c0000000-0000-4000-8000-000000000004', 1, '429',
                      retry_after_seconds => 0),
  'queued', 'Retry-After 0 is accepted');
select is(
  (select run_at from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000004'),
  now(), 'Retry-After 0 makes the task due at once');

-- ---------------------------------------------------------------- long errors
insert into public.ai_tasks (id, project_id, type, priority) values
  ('c0000000-0000-4000-8000-000000000005', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 100);
do $$ begin perform public.claim_ai_task('worker-1'); end $$;
do $$ begin
  perform public.fail_ai_task('c0000000-0000-4000-8000-000000000005', 1, repeat('e', 10000));
end $$;
select is(
  (select length(error) from public.ai_tasks
   where id = 'c0000000-0000-4000-8000-000000000005'),
  4000, 'a very long error is cut to 4000 characters, not refused');

select * from finish();
rollback;
