-- Bad arguments: every function checks its inputs before its first write and
-- raises 22023 (22004 for a missing one) with a message that names the
-- argument, the rule and the value, and the COLUMN field set to the argument.
-- At the end, nothing in the queue has changed.
begin;
select plan(56);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply'),
  ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-1'); end $$;
update public.ai_tasks set status = 'failed', finished_at = now()
where id = 'c0000000-0000-4000-8000-000000000002';

-- The queue as it is before the bad calls.
create temp table before_calls on commit drop as
  select (select md5(string_agg(t::text, ',' order by t.id)) from public.ai_tasks t) as tasks,
         (select count(*) from public.chat_messages) as messages,
         (select count(*) from public.build_logs) as logs;

-- The COLUMN and HINT fields of the error a statement raises.
create function pg_temp.error_fields(statement text, out column_name text, out hint text)
language plpgsql as $$
begin
  execute statement;
exception when others then
  get stacked diagnostics column_name = column_name, hint = pg_exception_hint;
end;
$$;

-- ---------------------------------------------------------------- claim_ai_task
select throws_ok($$select public.claim_ai_task(null)$$,
  '22004', 'worker_id must be 1 to 200 characters, got null',
  'claim: a missing worker_id is refused');
select throws_ok($$select public.claim_ai_task('   ')$$,
  '22023', 'worker_id must be 1 to 200 characters, got ''   ''',
  'claim: a blank worker_id is refused');
select throws_ok(format('select public.claim_ai_task(%L)', repeat('w', 201)),
  '22023', format('worker_id must be 1 to 200 characters, got %L', repeat('w', 201)),
  'claim: a worker_id of 201 characters is refused');
select throws_ok($$select public.claim_ai_task('w', batch_size => 0)$$,
  '22023', 'batch_size must be between 1 and 1000, got 0',
  'claim: a batch of 0 is refused');
select throws_ok($$select public.claim_ai_task('w', batch_size => 10000)$$,
  '22023', 'batch_size must be between 1 and 1000, got 10000',
  'claim: a batch of 10000 is refused');
select throws_ok($$select public.claim_ai_task('w', batch_size => null)$$,
  '22004', 'batch_size must be between 1 and 1000, got null',
  'claim: a null batch_size is refused');
select throws_ok($$select public.claim_ai_task('w', lease_seconds => 0)$$,
  '22023', 'lease_seconds must be between 5 and 3600, got 0',
  'claim: a lease of 0 s is refused');
select throws_ok($$select public.claim_ai_task('w', lease_seconds => 86400)$$,
  '22023', 'lease_seconds must be between 5 and 3600, got 86400',
  'claim: a lease of a day is refused');
select is(
  (select array[column_name, hint]
   from pg_temp.error_fields($$select public.claim_ai_task('w', lease_seconds => 86400)$$)),
  array['lease_seconds', 'Extend a long task''s lease with extend_ai_task_lease.'],
  'claim: the error names the argument in COLUMN and hints at the way out');

-- ---------------------------------------------------------------- complete_ai_task
select throws_ok($$select public.complete_ai_task(null, 1, 'x')$$,
  '22004', 'task_id is required, got null', 'complete: a missing task_id is refused');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', null, 'x')$$,
  '22004', 'attempt must be the attempt claim_ai_task returned, got null',
  'complete: a missing attempt is refused');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 0, 'x')$$,
  '22023', 'attempt must be the attempt claim_ai_task returned, got 0',
  'complete: attempt 0 is refused');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, null)$$,
  '22004', 'content must be text of at most 200000 characters, got null',
  'complete: missing content is refused');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1,
                                   repeat('x', 200001))$$,
  '22023', 'content must be text of at most 200000 characters, got 200001 characters',
  'complete: a huge answer is refused, its size named rather than echoed');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'x', '[1]')$$,
  '22023', 'result must be a JSON object, got array',
  'complete: a result that is not an object is refused');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'x', '{}', '')$$,
  '22023', 'model must be 1 to 200 characters, got ''''',
  'complete: an empty model name is refused');
select is(
  (pg_temp.error_fields(
     $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, null)$$)
  ).column_name,
  'content', 'complete: the error names the argument in COLUMN');

-- ---------------------------------------------------------------- fail_ai_task
select throws_ok($$select public.fail_ai_task(null, 1, 'x')$$,
  '22004', 'task_id is required, got null', 'fail: a missing task_id is refused');
select throws_ok($$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', -1, 'x')$$,
  '22023', 'attempt must be the attempt claim_ai_task returned, got -1',
  'fail: a negative attempt is refused');
select throws_ok($$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, null)$$,
  '22004', 'error must describe what went wrong, got null',
  'fail: a missing error is refused');
select throws_ok($$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, '  ')$$,
  '22023', 'error must describe what went wrong, got ''  ''',
  'fail: a blank error is refused');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'x', null)$$,
  '22004', 'retryable must be true or false, got null',
  'fail: a null retryable is refused');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'x', true, -1)$$,
  '22023', 'retry_after_seconds must be between 0 and 86400, got -1',
  'fail: a negative Retry-After is refused');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'x', true, 86401)$$,
  '22023', 'retry_after_seconds must be between 0 and 86400, got 86401',
  'fail: a Retry-After beyond a day is refused');

-- ---------------------------------------------------------------- lease helpers
select throws_ok($$select public.extend_ai_task_lease(null, 1)$$,
  '22004', 'task_id is required, got null', 'extend: a missing task_id is refused');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000001', 0)$$,
  '22023', 'attempt must be the attempt claim_ai_task returned, got 0',
  'extend: attempt 0 is refused');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000001', 1, 0)$$,
  '22023', 'lease_seconds must be between 5 and 3600, got 0',
  'extend: a lease of 0 s is refused');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-000000000001', 1, 86400)$$,
  '22023', 'lease_seconds must be between 5 and 3600, got 86400',
  'extend: a lease of a day is refused');
select throws_ok($$select public.release_ai_task(null, 1)$$,
  '22004', 'task_id is required, got null', 'release: a missing task_id is refused');
select throws_ok(
  $$select public.release_ai_task('c0000000-0000-4000-8000-000000000001', null)$$,
  '22004', 'attempt must be the attempt claim_ai_task returned, got null',
  'release: a missing attempt is refused');
select throws_ok($$select public.stream_ai_task_reply(null, 1, 'x')$$,
  '22004', 'task_id is required, got null', 'stream: a missing task_id is refused');
select throws_ok(
  $$select public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1, null)$$,
  '22004', 'content must be text of at most 200000 characters, got null',
  'stream: missing content is refused');
select throws_ok(
  $$select public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1,
                                       repeat('x', 200001))$$,
  '22023', 'content must be text of at most 200000 characters, got 200001 characters',
  'stream: a huge partial reply is refused');

-- ---------------------------------------------------------------- enqueue_ai_task
select throws_ok($$select public.enqueue_ai_task(null)$$,
  '22004', 'project_id is required, got null', 'enqueue: a missing project_id is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', 'summarize')$$,
  '22023', 'type must be a known task type, got ''summarize''',
  'enqueue: an unknown type is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', null)$$,
  '22004', 'type must be a known task type, got null',
  'enqueue: a null type is refused');
select is(
  (pg_temp.error_fields($$select public.enqueue_ai_task(
     'a1000000-0000-4000-8000-000000000001', 'summarize')$$)).hint,
  'Known types: chat_reply, build_site, refactor_code.',
  'enqueue: the unknown-type error lists the known types');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', 'chat_reply',
                                  '[1, 2]')$$,
  '22023', 'payload must be a JSON object, got array',
  'enqueue: an array payload is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', 'chat_reply',
                                  '"text"')$$,
  '22023', 'payload must be a JSON object, got string',
  'enqueue: a string payload is refused');
select throws_ok(
  format($$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001',
                                         'chat_reply', %L)$$,
         jsonb_build_object('blob', repeat('x', 1048576))),
  '22023', 'payload must be at most 1 MiB as JSON text, got 1048588 bytes',
  'enqueue: a payload over 1 MiB is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001',
                                  message => '   ')$$,
  '22023', 'message must be 1 to 100000 characters, got 3 characters',
  'enqueue: a blank message is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001',
                                  message => repeat('m', 100001))$$,
  '22023', 'message must be 1 to 100000 characters, got 100001 characters',
  'enqueue: a huge message is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001',
                                  model => 'gpt 4')$$,
  '22023', 'model must be a model id of 1 to 200 characters without spaces, got ''gpt 4''',
  'enqueue: a model name with a space is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', priority => 101)$$,
  '22023', 'priority must be between -100 and 100, got 101',
  'enqueue: a priority above 100 is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', priority => null)$$,
  '22004', 'priority must be between -100 and 100, got null',
  'enqueue: a null priority is refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', max_attempts => 0)$$,
  '22023', 'max_attempts must be between 1 and 25, got 0',
  'enqueue: zero attempts are refused');
select throws_ok(
  $$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', max_attempts => 26)$$,
  '22023', 'max_attempts must be between 1 and 25, got 26',
  'enqueue: more than 25 attempts are refused');
select throws_ok(
  $$select public.enqueue_ai_task('f0000000-0000-4000-8000-00000000dead')$$,
  'AQ002', 'project f0000000-0000-4000-8000-00000000dead not found',
  'enqueue: an unknown project is refused as not found');

-- ---------------------------------------------------------------- owner actions
select throws_ok($$select public.cancel_ai_task(null)$$,
  '22004', 'task_id is required, got null', 'cancel: a missing task_id is refused');
select throws_ok($$select public.cancel_ai_task('f0000000-0000-4000-8000-00000000dead')$$,
  'AQ002', 'task f0000000-0000-4000-8000-00000000dead not found',
  'cancel: an unknown task is refused as not found');
select throws_ok($$select public.retry_ai_task(null)$$,
  '22004', 'task_id is required, got null', 'retry: a missing task_id is refused');
select throws_ok(
  $$select public.retry_ai_task('c0000000-0000-4000-8000-000000000002', 0)$$,
  '22023', 'extra_attempts must be between 1 and 25, got 0',
  'retry: zero extra attempts are refused');
select throws_ok(
  $$select public.retry_ai_task('c0000000-0000-4000-8000-000000000002', 26)$$,
  '22023', 'extra_attempts must be between 1 and 25, got 26',
  'retry: more than 25 extra attempts are refused');

-- ---------------------------------------------------------------- nothing changed
select is(
  (select md5(string_agg(t::text, ',' order by t.id)) from public.ai_tasks t),
  (select tasks from before_calls),
  'the refused calls changed no task');
select is((select count(*) from public.chat_messages), (select messages from before_calls),
  'the refused calls wrote no message');
select is((select count(*) from public.build_logs), (select logs from before_calls),
  'the refused calls wrote no log');

select * from finish();
rollback;
