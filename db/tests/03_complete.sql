-- complete_ai_task: the answer is written once, by the attempt that holds the
-- task, together with the task's final state and a log.
begin;
select plan(20);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);
insert into public.ai_tasks (id, project_id, type, model) values
  ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 'openai/gpt-4o-mini'),
  ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply', 'openai/gpt-4o-mini');
do $$ begin perform public.claim_ai_task('worker-1', batch_size => 2); end $$;

-- ---------------------------------------------------------------- the answer
create temp table answer on commit drop as
  select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'Hello there',
           '{"tokens": 12}', 'anthropic/claude-3-haiku') as message_id;

select isnt((select message_id from answer), null, 'complete returns the message id');
select row_eq(
  $$select m.project_id, m.role, m.content, m.task_id, m.streaming, m.metadata
    from public.chat_messages m join answer a on m.id = a.message_id$$,
  row('a1000000-0000-4000-8000-000000000001'::uuid, 'assistant'::text, 'Hello there'::text,
      'c0000000-0000-4000-8000-000000000001'::uuid, false, '{"tokens": 12}'::jsonb),
  'the returned id is a final assistant message of the task''s project with the content');
select row_eq(
  $$select status, result, model, error, finished_at, locked_by, locked_until, attempts
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('completed'::text, '{"tokens": 12}'::jsonb, 'anthropic/claude-3-haiku'::text,
      null::text, now(), null::text, null::timestamptz, 1),
  'the task is completed with its result and the model that answered, lease released');
select is(
  (select message from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001'
     and metadata ->> 'event' = 'completed'),
  'task completed by worker-1 on attempt 1',
  'completing writes a build log');
select is(
  (select metadata ->> 'message_id' from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001'
     and metadata ->> 'event' = 'completed'),
  (select message_id::text from answer),
  'the completion log points at the answer');

-- ---------------------------------------------------------------- idempotent
select is(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'Hello again'),
  (select message_id from answer),
  'repeating the completion with the same attempt returns the same message id');
select is(
  (select count(*)::int from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000001'),
  1, 'the repeat writes no second message');
select is(
  (select content from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000001'),
  'Hello there', 'the repeat leaves the first answer as it was');
select is(
  (select count(*)::int from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000001'
     and metadata ->> 'event' = 'completed'),
  1, 'the repeat writes no second log');

-- ---------------------------------------------------------------- defaults
select isnt(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000002', 1, 'Second'),
  null, 'complete works with only the required arguments');
select row_eq(
  $$select result, model from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-000000000002'$$,
  row('{}'::jsonb, 'openai/gpt-4o-mini'::text),
  'without a result or model the task stores an empty result and keeps its model');

-- ---------------------------------------------------------------- who may not
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000003', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000003', 1, 'x')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000003 is not held by attempt 1: it is queued at attempt 0',
  'a queued task that nobody claimed cannot be completed');
do $$ begin perform public.claim_ai_task('worker-1'); end $$;
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000003', 2, 'x')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000003 is not held by attempt 2: it is running at attempt 1',
  'an attempt other than the holder''s cannot complete the task');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 2, 'x')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000001 is not held by attempt 2: it is completed at attempt 1',
  'a completed task cannot be completed again by another attempt');
select throws_ok(
  $$select public.complete_ai_task('f0000000-0000-4000-8000-00000000dead', 1, 'x')$$,
  'AQ002', 'task f0000000-0000-4000-8000-00000000dead not found',
  'an unknown task raises not found');
select is(
  (select count(*)::int from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000003'),
  0, 'refused completions write no message');
select is(
  (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000003'),
  'running', 'refused completions leave the holder''s task running');

update public.ai_tasks set status = 'failed', finished_at = now(), locked_by = null,
  locked_until = null
where id = 'c0000000-0000-4000-8000-000000000003';
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-000000000003', 1, 'x')$$,
  'AQ001',
  'task c0000000-0000-4000-8000-000000000003 is not held by attempt 1: it is failed at attempt 1',
  'a failed task cannot be completed, even by its last attempt');

-- ---------------------------------------------------------------- content size
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000004', 'a1000000-0000-4000-8000-000000000001',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-1'); end $$;
select isnt(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000004', 1, repeat('x', 200000)),
  null, 'an answer of exactly 200000 characters is accepted');
select is(
  (select length(content) from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000004'),
  200000, 'the long answer is stored whole');

select * from finish();
rollback;
