-- Realtime: chat_messages and ai_tasks join the supabase_realtime publication
-- where it exists (a stand-in here, since the Realtime server is not), once
-- however often setup runs; streamed replies still update and delete under
-- the publication; and the select policies Realtime applies per subscriber
-- give a project's owner exactly their own rows.
begin;
select plan(22);

-- ================================================================ no publication
select is(ai_queue.setup_realtime(), '{}'::text[],
  'without the supabase_realtime publication setup adds nothing');
select is((select count(*)::integer from pg_catalog.pg_publication
           where pubname = 'supabase_realtime'), 0,
  'and creates no publication');

-- ================================================================ publication present
create publication supabase_realtime;
select is(ai_queue.setup_realtime(), '{public.chat_messages,public.ai_tasks}'::text[],
  'setup adds chat_messages and ai_tasks to the publication');
select set_eq(
  $$select schemaname || '.' || tablename from pg_catalog.pg_publication_tables
    where pubname = 'supabase_realtime'$$,
  array['public.chat_messages', 'public.ai_tasks'],
  'the publication holds exactly the two tables');
select is(ai_queue.setup_realtime(), '{}'::text[],
  'a second run adds nothing');
select is((select count(*)::integer from pg_catalog.pg_publication_tables
           where pubname = 'supabase_realtime'), 2,
  'and the publication still holds each table once');

-- Realtime sends the full new row for INSERT and UPDATE and the key for
-- DELETE; both tables keep the primary key as replica identity.
select is((select relreplident from pg_catalog.pg_class
           where oid = 'public.chat_messages'::regclass), 'd',
  'chat_messages keeps the default replica identity');
select is((select relreplident from pg_catalog.pg_class
           where oid = 'public.ai_tasks'::regclass), 'd',
  'ai_tasks keeps the default replica identity');
select col_is_pk('public', 'chat_messages', 'id', 'chat_messages has the primary key it needs');
select col_is_pk('public', 'ai_tasks', 'id', 'ai_tasks has the primary key it needs');

-- ---------------------------------------------------------------- streaming still works
insert into auth.users (id, email) values
  ('71000000-0000-4000-8000-00000000000a', 'alice@example.test'),
  ('71000000-0000-4000-8000-00000000000b', 'bob@example.test');
insert into public.projects (id, owner_id) values
  ('71100000-0000-4000-8000-00000000000a', '71000000-0000-4000-8000-00000000000a'),
  ('71100000-0000-4000-8000-00000000000b', '71000000-0000-4000-8000-00000000000b');
select public.enqueue_ai_task('71100000-0000-4000-8000-00000000000a', message => 'hello');
select public.enqueue_ai_task('71100000-0000-4000-8000-00000000000b', message => 'hi');

create temporary table claimed on commit drop as
  select id, attempt, project_id from public.claim_ai_task('w1', batch_size => 2);
select ok(public.stream_ai_task_reply(
    (select id from claimed where project_id = '71100000-0000-4000-8000-00000000000a'),
    1, 'Hel'),
  'a streamed reply is inserted into a published table');
select ok(public.stream_ai_task_reply(
    (select id from claimed where project_id = '71100000-0000-4000-8000-00000000000a'),
    1, 'Hello there'),
  'and updated in place while it grows');
select lives_ok(
  $$select public.complete_ai_task(
      (select id from claimed where project_id = '71100000-0000-4000-8000-00000000000a'),
      1, 'Hello there!')$$,
  'the final reply updates the published row');
select ok(public.stream_ai_task_reply(
    (select id from claimed where project_id = '71100000-0000-4000-8000-00000000000b'),
    1, 'partial'),
  'a second task streams a partial reply');
select is(public.fail_ai_task(
    (select id from claimed where project_id = '71100000-0000-4000-8000-00000000000b'),
    1, 'provider down'), 'queued',
  'failing it deletes the partial reply from the published table');
select is((select count(*)::integer from public.chat_messages
           where project_id = '71100000-0000-4000-8000-00000000000b' and role = 'assistant'),
  0, 'the partial reply is gone');

-- ---------------------------------------------------------------- what each subscriber may see
set local role authenticated;
set local request.jwt.claims = '{"sub": "71000000-0000-4000-8000-00000000000a", "role": "authenticated"}';
select set_eq($$select content from public.chat_messages$$,
  array['hello', 'Hello there!'],
  'alice sees exactly her project''s messages, question and answer');
select set_eq($$select project_id from public.ai_tasks$$,
  array['71100000-0000-4000-8000-00000000000a'::uuid],
  'alice sees exactly her project''s tasks');

set local request.jwt.claims = '{"sub": "71000000-0000-4000-8000-00000000000b", "role": "authenticated"}';
select set_eq($$select content from public.chat_messages$$, array['hi'],
  'bob sees only his own message, never alice''s reply');
select set_eq($$select status from public.ai_tasks$$, array['queued'],
  'bob sees only his own task');

set local request.jwt.claims = '{"sub": "71000000-0000-4000-8000-0000000000ff", "role": "authenticated"}';
select is_empty($$select 1 from public.chat_messages union all select 1 from public.ai_tasks$$,
  'a signed-in user without projects sees nothing');

reset role;
set local role anon;
select throws_ok($$select 1 from public.chat_messages$$, '42501', null,
  'an anonymous subscriber may not read messages at all');
reset role;

select * from finish();
rollback;
