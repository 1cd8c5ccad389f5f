-- The privilege and row-level security matrix. Each API role tries to read
-- and write every table and to execute every public function; only what the
-- design allows gets through:
--   anon           nothing at all;
--   authenticated  reads its own projects' rows; inserts user messages and
--                  queued tasks (choosing no queue state) into its own
--                  projects; manages its own projects' names; enqueues,
--                  cancels and retries its own tasks; nothing else;
--   service_role   everything.
-- A signed-in user is simulated the way PostgREST does it: `set local role`
-- and the JWT claims in request.jwt.claims. PostgREST itself cannot be
-- installed here, so the HTTP layer in front of these roles is not exercised.
begin;
select plan(148);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test'),
  ('b0000000-0000-4000-8000-000000000002', 'other@example.test');
-- A generous running cap, so the service's claim below takes every due task.
insert into public.projects (id, owner_id, name, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
   'Owner''s project', 1000),
  ('a1000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001',
   'Owner''s second project', null),
  ('b1000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002',
   'Other user''s project', null);
insert into public.ai_tasks (id, project_id, user_id, type, status, attempts, finished_at) values
  ('c0000000-0000-4000-8000-0000000000a1', 'a1000000-0000-4000-8000-000000000001',
   'a0000000-0000-4000-8000-000000000001', 'chat_reply', 'queued', 0, null),
  ('c0000000-0000-4000-8000-0000000000a2', 'a1000000-0000-4000-8000-000000000001',
   'a0000000-0000-4000-8000-000000000001', 'chat_reply', 'failed', 3, now()),
  ('c0000000-0000-4000-8000-0000000000a3', 'a1000000-0000-4000-8000-000000000001',
   'a0000000-0000-4000-8000-000000000001', 'chat_reply', 'queued', 0, null),
  ('c0000000-0000-4000-8000-0000000000b1', 'b1000000-0000-4000-8000-000000000001',
   'b0000000-0000-4000-8000-000000000002', 'chat_reply', 'queued', 0, null);
insert into public.chat_messages (project_id, role, content) values
  ('a1000000-0000-4000-8000-000000000001', 'user', 'owner''s question'),
  ('b1000000-0000-4000-8000-000000000001', 'user', 'other user''s question');
insert into public.build_logs (project_id, task_id, log_type, message) values
  ('a1000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-0000000000a1', 'info',
    'owner''s log'),
  ('b1000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-0000000000b1', 'info',
    'other user''s log');

-- How many rows a statement touched, as the role running it.
create function pg_temp.affected(statement text) returns integer
language plpgsql as $$
declare
  touched integer;
begin
  execute statement;
  get diagnostics touched = row_count;
  return touched;
end;
$$;


-- ================================================================ anon
set local role anon;
set local request.jwt.claims = '{"role": "anon"}';

select throws_ok($$select * from public.projects$$, '42501',
  'permission denied for table projects', 'anon cannot read projects');
select throws_ok($$insert into public.projects (name) values ('x')$$, '42501',
  'permission denied for table projects', 'anon cannot insert into projects');
select throws_ok($$update public.projects set name = 'renamed'$$, '42501',
  'permission denied for table projects', 'anon cannot update projects');
select throws_ok($$delete from public.projects$$, '42501',
  'permission denied for table projects', 'anon cannot delete from projects');
select throws_ok($$select * from public.ai_tasks$$, '42501',
  'permission denied for table ai_tasks', 'anon cannot read ai_tasks');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply')$$,
  '42501',
  'permission denied for table ai_tasks', 'anon cannot insert into ai_tasks');
select throws_ok($$update public.ai_tasks set status = 'cancelled', finished_at = now()$$, '42501',
  'permission denied for table ai_tasks', 'anon cannot update ai_tasks');
select throws_ok($$delete from public.ai_tasks$$, '42501',
  'permission denied for table ai_tasks', 'anon cannot delete from ai_tasks');
select throws_ok($$select * from public.chat_messages$$, '42501',
  'permission denied for table chat_messages', 'anon cannot read chat_messages');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'x')$$,
  '42501',
  'permission denied for table chat_messages', 'anon cannot insert into chat_messages');
select throws_ok($$update public.chat_messages set content = 'edited'$$, '42501',
  'permission denied for table chat_messages', 'anon cannot update chat_messages');
select throws_ok($$delete from public.chat_messages$$, '42501',
  'permission denied for table chat_messages', 'anon cannot delete from chat_messages');
select throws_ok($$select * from public.build_logs$$, '42501',
  'permission denied for table build_logs', 'anon cannot read build_logs');
select throws_ok(
  $$insert into public.build_logs (project_id, log_type, message)
    values ('a1000000-0000-4000-8000-000000000001', 'info', 'x')$$,
  '42501',
  'permission denied for table build_logs', 'anon cannot insert into build_logs');
select throws_ok($$update public.build_logs set message = 'edited'$$, '42501',
  'permission denied for table build_logs', 'anon cannot update build_logs');
select throws_ok($$delete from public.build_logs$$, '42501',
  'permission denied for table build_logs', 'anon cannot delete from build_logs');
select throws_ok($$select public.claim_ai_task('intruder')$$, '42501',
  'permission denied for function claim_ai_task', 'anon cannot execute claim_ai_task');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function complete_ai_task', 'anon cannot execute complete_ai_task');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function fail_ai_task', 'anon cannot execute fail_ai_task');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function extend_ai_task_lease',
  'anon cannot execute extend_ai_task_lease');
select throws_ok(
  $$select public.release_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function release_ai_task', 'anon cannot execute release_ai_task');
select throws_ok(
  $$select public.stream_ai_task_reply('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function stream_ai_task_reply',
  'anon cannot execute stream_ai_task_reply');
select throws_ok(
  $$select public.snooze_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function snooze_ai_task', 'anon cannot execute snooze_ai_task');
select throws_ok($$select public.reap_expired_ai_tasks()$$, '42501',
  'permission denied for function reap_expired_ai_tasks',
  'anon cannot execute reap_expired_ai_tasks');
select throws_ok($$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001')$$, '42501',
  'permission denied for function enqueue_ai_task', 'anon cannot execute enqueue_ai_task');
select throws_ok($$select public.cancel_ai_task('c0000000-0000-4000-8000-0000000000a1')$$, '42501',
  'permission denied for function cancel_ai_task', 'anon cannot execute cancel_ai_task');
select throws_ok($$select public.retry_ai_task('c0000000-0000-4000-8000-0000000000a2')$$, '42501',
  'permission denied for function retry_ai_task', 'anon cannot execute retry_ai_task');
select throws_ok($$select ai_queue.owns_project('a1000000-0000-4000-8000-000000000001')$$, '42501',
  'permission denied for function owns_project', 'anon cannot execute ai_queue.owns_project');
select throws_ok(
  $$select ai_queue.authorize_project('a1000000-0000-4000-8000-000000000001')$$, '42501',
  'permission denied for function authorize_project',
  'anon cannot execute ai_queue.authorize_project');
select throws_ok($$select ai_queue.reap_expired_leases(10)$$, '42501',
  'permission denied for function reap_expired_leases',
  'anon cannot execute ai_queue.reap_expired_leases');
select throws_ok(
  $$select ai_queue.log('a1000000-0000-4000-8000-000000000001', null, 'info', 'forged')$$, '42501',
  'permission denied for function log', 'anon cannot execute ai_queue.log');
select throws_ok($$select ai_queue.invalid_argument('a', 'b', 'c')$$, '42501',
  'permission denied for function invalid_argument',
  'anon cannot execute ai_queue.invalid_argument');
select throws_ok($$select ai_queue.retry_delay(1)$$, '42501',
  'permission denied for function retry_delay', 'anon cannot execute ai_queue.retry_delay');
reset role;
reset request.jwt.claims;


-- ================================================================ another signed-in user
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "b0000000-0000-4000-8000-000000000002", "role": "authenticated"}';

select is(
  (select array_agg(id) from public.projects),
    array['b1000000-0000-4000-8000-000000000001']::uuid[],
  'another user reads only their own project');
select is(
  (select count(*)::int from public.ai_tasks
    where project_id <> 'b1000000-0000-4000-8000-000000000001'), 0,
  'another user reads none of the owner''s ai_tasks');
select is(
  (select count(*)::int from public.chat_messages
    where project_id <> 'b1000000-0000-4000-8000-000000000001'), 0,
  'another user reads none of the owner''s chat_messages');
select is(
  (select count(*)::int from public.build_logs
    where project_id <> 'b1000000-0000-4000-8000-000000000001'), 0,
  'another user reads none of the owner''s build_logs');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply')$$,
  '42501', 'new row violates row-level security policy for table "ai_tasks"',
  'another user cannot queue a task in the owner''s project');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'x')$$,
  '42501', 'new row violates row-level security policy for table "chat_messages"',
  'another user cannot post a message in the owner''s project');
select throws_ok(
  $$insert into public.projects (owner_id, name)
    values ('a0000000-0000-4000-8000-000000000001', 'planted')$$,
  '42501', 'permission denied for table projects',
  'another user cannot create a project in the owner''s name');
select is(
  pg_temp.affected($$update public.projects set name = 'taken'
    where id = 'a1000000-0000-4000-8000-000000000001'$$), 0,
  'another user''s rename of the owner''s project touches nothing');
select is(
  pg_temp.affected($$delete from public.projects
    where id = 'a1000000-0000-4000-8000-000000000001'$$), 0,
  'another user''s delete of the owner''s project touches nothing');
select throws_ok(
  $$update public.ai_tasks set status = 'cancelled', finished_at = now()$$,
  '42501', 'permission denied for table ai_tasks',
  'another user cannot update ai_tasks');
select throws_ok($$delete from public.ai_tasks$$, '42501', 'permission denied for table ai_tasks',
  'another user cannot delete from ai_tasks');
select throws_ok(
  $$update public.chat_messages set content = 'edited'$$,
  '42501', 'permission denied for table chat_messages',
  'another user cannot update chat_messages');
select throws_ok(
  $$delete from public.chat_messages$$, '42501', 'permission denied for table chat_messages',
  'another user cannot delete from chat_messages');
select throws_ok(
  $$update public.build_logs set message = 'edited'$$,
  '42501', 'permission denied for table build_logs',
  'another user cannot update build_logs');
select throws_ok(
  $$delete from public.build_logs$$, '42501', 'permission denied for table build_logs',
  'another user cannot delete from build_logs');
select throws_ok($$select public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001')$$, 'AQ002',
  'project a1000000-0000-4000-8000-000000000001 not found',
  'another user cannot enqueue into the owner''s project, and learns only "not found"');
select throws_ok($$select public.cancel_ai_task('c0000000-0000-4000-8000-0000000000a1')$$, 'AQ002',
  'task c0000000-0000-4000-8000-0000000000a1 not found',
  'another user cannot cancel the owner''s task, and learns only "not found"');
select throws_ok($$select public.retry_ai_task('c0000000-0000-4000-8000-0000000000a2')$$, 'AQ002',
  'task c0000000-0000-4000-8000-0000000000a2 not found',
  'another user cannot retry the owner''s task, and learns only "not found"');
select throws_ok($$select public.claim_ai_task('intruder')$$, '42501',
  'permission denied for function claim_ai_task', 'a signed-in user cannot execute claim_ai_task');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function complete_ai_task',
  'a signed-in user cannot execute complete_ai_task');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function fail_ai_task', 'a signed-in user cannot execute fail_ai_task');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function extend_ai_task_lease',
  'a signed-in user cannot execute extend_ai_task_lease');
select throws_ok(
  $$select public.release_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function release_ai_task',
  'a signed-in user cannot execute release_ai_task');
select throws_ok(
  $$select public.stream_ai_task_reply('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function stream_ai_task_reply',
  'a signed-in user cannot execute stream_ai_task_reply');
select throws_ok(
  $$select public.snooze_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function snooze_ai_task',
  'a signed-in user cannot execute snooze_ai_task');
select throws_ok($$select public.reap_expired_ai_tasks()$$, '42501',
  'permission denied for function reap_expired_ai_tasks',
  'a signed-in user cannot execute reap_expired_ai_tasks');
reset role;
reset request.jwt.claims;

select row_eq(
  $$select p.name, (select status from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-0000000000a1'),
           (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-0000000000a2')
    from public.projects p where p.id = 'a1000000-0000-4000-8000-000000000001'$$,
  row('Owner''s project'::text, 'queued'::text, 'failed'::text),
  'after the other user''s attempts the owner''s project and tasks are unchanged');

-- ================================================================ the owner
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';

select is((select array_agg(id order by id) from public.projects),
  array['a1000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000002']::uuid[],
  'the owner reads their own projects and no other');
select is((select array_agg(id order by id) from public.ai_tasks),
  array['c0000000-0000-4000-8000-0000000000a1', 'c0000000-0000-4000-8000-0000000000a2',
  'c0000000-0000-4000-8000-0000000000a3']::uuid[],
  'the owner reads their own tasks and no other');
select is((select array_agg(content) from public.chat_messages),
  array['owner''s question'], 'the owner reads their own messages and no other');
select is((select array_agg(message) from public.build_logs),
  array['owner''s log'], 'the owner reads their own logs and no other');
select lives_ok(
  $$insert into public.ai_tasks (project_id, type, payload, model)
   
    values ('a1000000-0000-4000-8000-000000000001', 'build_site', '{"page": "about"}',
      'openai/gpt-4o-mini')$$,
  'the owner can queue a task in their project');
select row_eq(
  $$select user_id, status, attempts, result, locked_by from public.ai_tasks
    where type = 'build_site'$$,
  row('a0000000-0000-4000-8000-000000000001'::uuid, 'queued'::text, 0, null::jsonb, null::text),
  'the inserted task is queued, unattempted, in the owner''s name');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'completed')$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s status');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, attempts)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 1)$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s attempts');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, result)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', '{}')$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s result');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, locked_by)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'w')$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s locked_by');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, locked_until)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', now())$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s locked_until');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, max_attempts)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 25)$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s max_attempts');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, priority)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 100)$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s priority');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, user_id)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply',
      'b0000000-0000-4000-8000-000000000002')$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s user_id');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, run_at)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', now() - interval '1 day')$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot choose a task''s run_at');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type)
    values ('b1000000-0000-4000-8000-000000000001', 'chat_reply')$$,
  '42501', 'new row violates row-level security policy for table "ai_tasks"',
  'the owner cannot queue a task in another user''s project');
select lives_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'hi')$$,
  'the owner can post a user message in their project');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('a1000000-0000-4000-8000-000000000001', 'assistant', 'forged answer')$$,
  '42501', 'new row violates row-level security policy for table "chat_messages"',
  'the owner cannot post an assistant message');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content, task_id)
   
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'x',
      'c0000000-0000-4000-8000-0000000000a1')$$,
  '42501', 'permission denied for table chat_messages',
  'the owner cannot tie a message to a task');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content, streaming)
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'x', false)$$,
  '42501', 'permission denied for table chat_messages',
  'the owner cannot set a message''s streaming flag');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('b1000000-0000-4000-8000-000000000001', 'user', 'x')$$,
  '42501', 'new row violates row-level security policy for table "chat_messages"',
  'the owner cannot post in another user''s project');
select throws_ok(
  $$insert into public.build_logs (project_id, log_type, message)
    values ('a1000000-0000-4000-8000-000000000001', 'info', 'x')$$,
  '42501',
  'permission denied for table build_logs', 'the owner cannot write a build log');
select throws_ok(
  $$update public.ai_tasks set status = 'cancelled', finished_at = now()$$,
  '42501', 'permission denied for table ai_tasks',
  'the owner cannot update ai_tasks');
select throws_ok($$delete from public.ai_tasks$$, '42501', 'permission denied for table ai_tasks',
  'the owner cannot delete from ai_tasks');
select throws_ok(
  $$update public.chat_messages set content = 'edited'$$,
  '42501', 'permission denied for table chat_messages',
  'the owner cannot update chat_messages');
select throws_ok(
  $$delete from public.chat_messages$$, '42501', 'permission denied for table chat_messages',
  'the owner cannot delete from chat_messages');
select throws_ok(
  $$update public.build_logs set message = 'edited'$$,
  '42501', 'permission denied for table build_logs',
  'the owner cannot update build_logs');
select throws_ok(
  $$delete from public.build_logs$$, '42501', 'permission denied for table build_logs',
  'the owner cannot delete from build_logs');
select is(pg_temp.affected($$insert into public.projects (name) values ('New one')$$), 1,
  'the owner can create a project, owned by themselves');
select throws_ok(
  $$insert into public.projects (owner_id, name)
    values ('b0000000-0000-4000-8000-000000000002', 'gift')$$,
  '42501', 'permission denied for table projects',
  'the owner cannot create a project owned by someone else');
select is(
  pg_temp.affected($$update public.projects set name = 'Renamed'
    where id = 'a1000000-0000-4000-8000-000000000001'$$),
  1, 'the owner can rename their project');
select throws_ok(
  $$update public.projects set owner_id = 'b0000000-0000-4000-8000-000000000002'
    where id = 'a1000000-0000-4000-8000-000000000001'$$,
  '42501', 'permission denied for table projects',
  'the owner cannot hand a project to another user');
select is(
  pg_temp.affected($$delete from public.projects
    where id = 'b1000000-0000-4000-8000-000000000001'$$), 0,
  'the owner cannot delete another user''s project');
select is(pg_temp.affected($$delete from public.projects where name = 'New one'$$), 1,
  'the owner can delete their own project');
select isnt(
  public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', message => 'Hello?'), null,
  'the owner can enqueue a task in their project');
select throws_ok($$select public.enqueue_ai_task('b1000000-0000-4000-8000-000000000001')$$, 'AQ002',
  'project b1000000-0000-4000-8000-000000000001 not found',
  'the owner cannot enqueue into another user''s project');
select is(public.cancel_ai_task('c0000000-0000-4000-8000-0000000000a1'), 'cancelled',
  'the owner can cancel their task');
select is(
  public.retry_ai_task('c0000000-0000-4000-8000-0000000000a2'), 'queued',
  'the owner can retry their failed task');
select throws_ok($$select public.cancel_ai_task('c0000000-0000-4000-8000-0000000000b1')$$, 'AQ002',
  'task c0000000-0000-4000-8000-0000000000b1 not found',
  'the owner cannot cancel another user''s task');
select throws_ok($$select public.claim_ai_task('intruder')$$, '42501',
  'permission denied for function claim_ai_task', 'the owner cannot execute claim_ai_task');
select throws_ok(
  $$select public.complete_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function complete_ai_task', 'the owner cannot execute complete_ai_task');
select throws_ok(
  $$select public.fail_ai_task('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function fail_ai_task', 'the owner cannot execute fail_ai_task');
select throws_ok(
  $$select public.extend_ai_task_lease('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function extend_ai_task_lease',
  'the owner cannot execute extend_ai_task_lease');
select throws_ok(
  $$select public.release_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function release_ai_task', 'the owner cannot execute release_ai_task');
select throws_ok(
  $$select public.stream_ai_task_reply('c0000000-0000-4000-8000-0000000000a1', 1, 'x')$$, '42501',
  'permission denied for function stream_ai_task_reply',
  'the owner cannot execute stream_ai_task_reply');
select throws_ok(
  $$select public.snooze_ai_task('c0000000-0000-4000-8000-0000000000a1', 1)$$, '42501',
  'permission denied for function snooze_ai_task', 'the owner cannot execute snooze_ai_task');
select throws_ok($$select public.reap_expired_ai_tasks()$$, '42501',
  'permission denied for function reap_expired_ai_tasks',
  'the owner cannot execute reap_expired_ai_tasks');
select throws_ok(
  $$select ai_queue.authorize_project('a1000000-0000-4000-8000-000000000001')$$, '42501',
  'permission denied for function authorize_project',
  'the owner cannot execute ai_queue.authorize_project');
select throws_ok($$select ai_queue.reap_expired_leases(10)$$, '42501',
  'permission denied for function reap_expired_leases',
  'the owner cannot execute ai_queue.reap_expired_leases');
select throws_ok(
  $$select ai_queue.log('a1000000-0000-4000-8000-000000000001', null, 'info', 'forged')$$, '42501',
  'permission denied for function log', 'the owner cannot execute ai_queue.log');
select throws_ok($$select ai_queue.invalid_argument('a', 'b', 'c')$$, '42501',
  'permission denied for function invalid_argument',
  'the owner cannot execute ai_queue.invalid_argument');
select throws_ok($$select ai_queue.retry_delay(1)$$, '42501',
  'permission denied for function retry_delay', 'the owner cannot execute ai_queue.retry_delay');
reset role;
reset request.jwt.claims;

select is(
  (select array_agg(m.role || ': ' || m.content order by m.seq) from public.chat_messages m
   where m.project_id = 'a1000000-0000-4000-8000-000000000001'),
  array['user: owner''s question', 'user: hi', 'user: Hello?'],
  'the owner''s accepted messages are exactly the user messages they posted');
select is(
  (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-0000000000b1'), 'queued',
  'the other user''s task is untouched');

-- ================================================================ service_role
set local role service_role;
set local request.jwt.claims = '{"role": "service_role"}';

select cmp_ok((select count(distinct project_id)::int from (
    select id as project_id from public.projects) r), '>=', 2,
  'the service reads every user''s projects');
select cmp_ok((select count(distinct project_id)::int from (
    select project_id as project_id from public.ai_tasks) r), '>=', 2,
  'the service reads every user''s ai_tasks');
select cmp_ok((select count(distinct project_id)::int from (
    select project_id as project_id from public.chat_messages) r), '>=', 2,
  'the service reads every user''s chat_messages');
select cmp_ok((select count(distinct project_id)::int from (
    select project_id as project_id from public.build_logs) r), '>=', 2,
  'the service reads every user''s build_logs');
select lives_ok(
  $$insert into public.projects (owner_id, name)
    values ('b0000000-0000-4000-8000-000000000002', 'by service')$$,
  'the service can insert a project for any user');
select lives_ok(
  $$insert into public.ai_tasks (project_id, type, status, attempts, locked_by, locked_until)
   
    values ('b1000000-0000-4000-8000-000000000001', 'chat_reply', 'running', 1,
      'svc', now() + interval '1 minute')$$,
  'the service can insert a task in any state');
select lives_ok($$insert into public.chat_messages (project_id, role, content)
    values ('b1000000-0000-4000-8000-000000000001', 'system', 'x')$$,
  'the service can insert any message');
select lives_ok($$insert into public.build_logs (project_id, log_type, message)
    values ('b1000000-0000-4000-8000-000000000001', 'warning', 'x')$$,
  'the service can write a build log');
select cmp_ok(
  pg_temp.affected($$update public.projects set name = 'renamed'
    where id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can update projects');
select cmp_ok(
  pg_temp.affected($$update public.ai_tasks set priority = 5
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can update ai_tasks');
select cmp_ok(
  pg_temp.affected($$update public.chat_messages set content = 'edited'
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can update chat_messages');
select cmp_ok(
  pg_temp.affected($$update public.build_logs set message = 'edited'
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can update build_logs');
select cmp_ok(
  pg_temp.affected($$delete from public.build_logs
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can delete from build_logs');
select cmp_ok(
  pg_temp.affected($$delete from public.chat_messages
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can delete from chat_messages');
select cmp_ok(
  pg_temp.affected($$delete from public.ai_tasks
    where project_id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can delete from ai_tasks');
select cmp_ok(
  pg_temp.affected($$delete from public.projects
    where id = 'b1000000-0000-4000-8000-000000000001'$$), '>=', 1,
  'the service can delete from projects');
select isnt(public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001'), null,
  'the service can enqueue into any project');
select is((select count(*)::int from public.claim_ai_task('svc-worker', batch_size => 10)), 5,
  'the service can claim');
select is(
  public.extend_ai_task_lease('c0000000-0000-4000-8000-0000000000a2', 4), true,
  'the service can execute extend_ai_task_lease');
select is(
  public.stream_ai_task_reply('c0000000-0000-4000-8000-0000000000a2', 4, 'part'), true,
  'the service can execute stream_ai_task_reply');
select is(
  public.release_ai_task('c0000000-0000-4000-8000-0000000000a2', 4), true,
  'the service can execute release_ai_task');
select is(public.reap_expired_ai_tasks(), 0, 'the service can execute reap_expired_ai_tasks');
select isnt(public.complete_ai_task('c0000000-0000-4000-8000-0000000000a3', 1, 'done'), null,
  'the service can complete a task');
select is(
  public.fail_ai_task((select id from public.ai_tasks where type = 'build_site'), 1, 'x'),
  'queued', 'the service can execute fail_ai_task');
select is(
  public.snooze_ai_task((select id from public.ai_tasks
                         where status = 'running' and attempts = 1 order by id limit 1), 1),
  'queued', 'the service can execute snooze_ai_task');
select is(public.cancel_ai_task('c0000000-0000-4000-8000-0000000000a2'), 'cancelled',
  'the service can cancel any task');
select is(
  public.retry_ai_task('c0000000-0000-4000-8000-0000000000a2'), 'queued',
  'the service can retry any task');
reset role;
reset request.jwt.claims;


-- ================================================================ the grants themselves
-- Every public function of this project (not of an extension), by who may run it.
create temp view our_functions as
  select p.oid, n.nspname, p.proname
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  where n.nspname in ('public', 'ai_queue')
    and not exists (select 1 from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                      and d.deptype = 'e');

select is(
  (select array_agg(nspname || '.' || proname order by nspname, proname) from our_functions
   where pg_catalog.has_function_privilege('anon', oid, 'execute')),
  null, 'anon can execute none of the queue''s functions');
select is(
  (select array_agg(nspname || '.' || proname order by nspname, proname) from our_functions
   where pg_catalog.has_function_privilege('authenticated', oid, 'execute')),
  array['ai_queue.owns_project', 'public.cancel_ai_task', 'public.enqueue_ai_task',
        'public.retry_ai_task'],
  'a signed-in user can execute exactly the owner actions and the RLS helper');
select is(
  (select array_agg(nspname || '.' || proname order by nspname, proname) from our_functions
  
    where nspname = 'public' and not pg_catalog.has_function_privilege('service_role', oid,
    'execute')),
  null, 'the service can execute every public function');
select is(
  (select array_agg(nspname || '.' || proname order by nspname, proname) from our_functions
   where nspname = 'ai_queue' and proname <> 'owns_project'
     and pg_catalog.has_function_privilege('service_role', oid, 'execute')),
  null, 'not even the service can call an ai_queue helper directly');
-- What each API role may do to each table or view of this project in public,
-- counting column grants too.
create temp view table_rights as
  select r.rolname as role, c.relname::text || ':' || p.priv as privilege
  from pg_catalog.pg_class c
  cross join unnest(array['select', 'insert', 'update', 'delete']) p (priv)
  cross join (values ('anon'), ('authenticated')) r (rolname)
  where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
    and not exists (select 1 from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid
                      and d.deptype = 'e')
    and (pg_catalog.has_table_privilege(r.rolname, c.oid, p.priv)
         or (p.priv <> 'delete'
             and pg_catalog.has_any_column_privilege(r.rolname, c.oid, p.priv)));
select is(
  (select array_agg(privilege order by privilege) from table_rights where role = 'anon'),
  null, 'anon has no privilege on any table or view in public, nor on any column');
select is(
  (select array_agg(privilege order by privilege) from table_rights
   where role = 'authenticated'),
  array['ai_tasks:insert', 'ai_tasks:select', 'build_logs:select', 'chat_messages:insert',
        'chat_messages:select', 'projects:delete', 'projects:insert', 'projects:select',
        'projects:update'],
  'a signed-in user holds exactly the grants the design gives, on no other table');
select is(
  (select array_agg(c.relname || '.' || a.attname || ':' || p.priv
                    order by c.relname, p.priv, a.attname)
   from pg_catalog.pg_class c
   join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
   cross join unnest(array['insert', 'update']) p (priv)
   where c.oid in ('public.projects'::regclass, 'public.ai_tasks'::regclass,
                   'public.chat_messages'::regclass, 'public.build_logs'::regclass)
     and pg_catalog.has_column_privilege('authenticated', c.oid, a.attnum, p.priv)),
  array['ai_tasks.model:insert', 'ai_tasks.payload:insert', 'ai_tasks.project_id:insert',
        'ai_tasks.type:insert', 'chat_messages.content:insert',
        'chat_messages.metadata:insert', 'chat_messages.project_id:insert',
        'chat_messages.role:insert', 'projects.name:insert', 'projects.name:update'],
  'a signed-in user may write only these columns: never queue state, owners or task links');

select * from finish();
rollback;
