-- stream_ai_task_reply: a reply shown while it is generated lives in one
-- assistant message marked streaming; completion turns that same message
-- final, and every other way out of `running` removes it.
begin;
select plan(24);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);
insert into public.ai_tasks (id, project_id, type) values
  ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001', 'chat_reply'),
  ('c0000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000001', 'chat_reply'),
  ('c0000000-0000-4000-8000-000000000003', 'a1000000-0000-4000-8000-000000000001', 'chat_reply'),
  ('c0000000-0000-4000-8000-000000000004', 'a1000000-0000-4000-8000-000000000001', 'chat_reply'),
  ('c0000000-0000-4000-8000-000000000005', 'a1000000-0000-4000-8000-000000000001', 'chat_reply');
do $$ begin perform public.claim_ai_task('worker-1', batch_size => 5); end $$;

-- The task's messages, as "content (streaming|final)", in order.
create function pg_temp.replies(task uuid) returns text[]
language sql as $$
  select coalesce(array_agg(m.content || case when m.streaming then ' (streaming)'
                                              else ' (final)' end order by m.seq), '{}')
  from public.chat_messages m where m.task_id = task
$$;

-- ---------------------------------------------------------------- create, update
select ok(public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1, 'Hel'),
  'the holder can stream the first part of a reply');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000001'), array['Hel (streaming)'],
  'the first part creates one streaming assistant message');
select row_eq(
  $$select project_id, role from public.chat_messages
    where task_id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('a1000000-0000-4000-8000-000000000001'::uuid, 'assistant'::text),
  'the streaming message is the assistant''s, in the task''s project');
create temp table streamed on commit drop as
  select id from public.chat_messages where task_id = 'c0000000-0000-4000-8000-000000000001';
select ok(public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1, 'Hello, wor'),
  'the holder can stream more');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000001'),
  array['Hello, wor (streaming)'], 'more text replaces the content of the same message');
select is((select id from public.chat_messages
           where task_id = 'c0000000-0000-4000-8000-000000000001'),
  (select id from streamed), 'the message keeps its id while it grows');

-- ---------------------------------------------------------------- complete
select is(
  public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'Hello, world!',
                          '{"tokens": 4}'),
  (select id from streamed), 'completion returns the streamed message''s id');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000001'),
  array['Hello, world! (final)'], 'completion turns the streamed message into the final one');
select is(
  (select metadata from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000001'),
  '{"tokens": 4}'::jsonb,
  'the final message carries the result and no leftover streaming marker');
select ok(not public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000001', 1, 'late'),
  'streaming after completion returns false');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000001'),
  array['Hello, world! (final)'], 'and leaves the final answer alone');

-- ---------------------------------------------------------------- fail
select ok(public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000002', 1, 'Half'),
  'a second task streams a partial reply');
select is(public.fail_ai_task('c0000000-0000-4000-8000-000000000002', 1, 'cut off'), 'queued',
  'that attempt fails');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000002'), '{}'::text[],
  'failing removes the partial reply');
update public.ai_tasks set run_at = now() where id = 'c0000000-0000-4000-8000-000000000002';
do $$ begin
  perform public.claim_ai_task('worker-2',
    project_id => 'a1000000-0000-4000-8000-000000000001');
end $$;
select ok(public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000002', 2, 'Again'),
  'the next attempt streams afresh');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000002'),
  array['Again (streaming)'], 'with a new partial reply of its own');
select ok(not public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000002', 1, 'Stale'),
  'the earlier attempt can no longer stream');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000002'),
  array['Again (streaming)'], 'the stale stream changed nothing');

-- ---------------------------------------------------------------- release, cancel, reap
do $$ begin
  perform public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000003', 1, 'Part');
  perform public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000004', 1, 'Part');
  perform public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000005', 1, 'Part');
end $$;
select ok(public.release_ai_task('c0000000-0000-4000-8000-000000000003', 1),
  'a streaming task is released');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000003'), '{}'::text[],
  'releasing removes the partial reply');
select is(public.cancel_ai_task('c0000000-0000-4000-8000-000000000004'), 'cancelled',
  'a streaming task is cancelled');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000004'), '{}'::text[],
  'cancelling removes the partial reply');
update public.ai_tasks set locked_until = now() - interval '1 second'
where id = 'c0000000-0000-4000-8000-000000000005';
select is(public.reap_expired_ai_tasks(), 1, 'a streaming task''s expired lease is reaped');
select is(pg_temp.replies('c0000000-0000-4000-8000-000000000005'), '{}'::text[],
  'reaping removes the partial reply');

select * from finish();
rollback;
