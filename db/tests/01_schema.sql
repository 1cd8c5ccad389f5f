-- The queue's tables and the constraints that keep a task's row consistent
-- whoever writes it: every CHECK rejects the state it exists to forbid.
begin;
select plan(23);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001');

-- ---------------------------------------------------------------- tables
select has_table('public', 'projects', 'projects exists');
select has_table('public', 'ai_tasks', 'ai_tasks exists');
select has_table('public', 'chat_messages', 'chat_messages exists');
select has_table('public', 'build_logs', 'build_logs exists');
select is(
  (select array_agg(c.relname::text order by c.relname)
   from pg_catalog.pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
     and not c.relrowsecurity
     and not exists (select 1 from pg_catalog.pg_depend d
                     where d.objid = c.oid and d.deptype = 'e')),
  null,
  'every table in public, dbmate''s schema_migrations too, has row-level security on');
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated']) r
   where pg_catalog.has_table_privilege(r, 'public.schema_migrations',
           'select, insert, update, delete, truncate')),
  null,
  'no API role can read or change dbmate''s schema_migrations');
select has_trigger('public', 'ai_tasks', 'ai_tasks_notify_queued',
  'inserting tasks fires the NOTIFY trigger');

-- ---------------------------------------------------------------- defaults
insert into public.ai_tasks (id, project_id, type)
values ('a0a00000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply');
select row_eq(
  $$select status, attempts, max_attempts, priority, payload, errors, run_at = now(),
           locked_by, finished_at
    from public.ai_tasks where id = 'a0a00000-0000-4000-8000-000000000001'$$,
  row('queued'::text, 0, 3, 0, '{}'::jsonb, '[]'::jsonb, true, null::text,
      null::timestamptz),
  'a new task is queued, unattempted, due now, with three attempts and no lease');

-- ---------------------------------------------------------------- task CHECKs
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'paused')$$,
  '23514', 'new row for relation "ai_tasks" violates check constraint "ai_tasks_status_known"',
  'an unknown status is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type)
    values ('a1000000-0000-4000-8000-000000000001', 'summarize')$$,
  '23514', 'new row for relation "ai_tasks" violates check constraint "ai_tasks_type_known"',
  'an unknown task type is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, attempts, max_attempts)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 4, 3)$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_attempts_within_max"',
  'attempts above max_attempts are rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status, attempts, result)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'completed', 1, '{}')$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_finished_iff_final"',
  'a completed task without finished_at is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, finished_at)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', now())$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_finished_iff_final"',
  'a queued task with finished_at is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status, attempts, finished_at)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'completed', 1, now())$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_completed_has_result"',
  'a completed task without a result is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, payload)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', '["not", "an object"]')$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_payload_is_object"',
  'a payload that is not a JSON object is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status, attempts)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'running', 1)$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_running_has_lease"',
  'a running task without a lease is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, locked_by, locked_until)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'w', now())$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_running_has_lease"',
  'a queued task holding a lease is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, status, locked_by, locked_until)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', 'running', 'w', now())$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_running_has_attempt"',
  'a running task that spent no attempt is rejected');
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, errors)
    values ('a1000000-0000-4000-8000-000000000001', 'chat_reply', '{}')$$,
  '23514',
  'new row for relation "ai_tasks" violates check constraint "ai_tasks_errors_is_array"',
  'an error history that is not a JSON array is rejected');

-- ---------------------------------------------------------------- messages
insert into public.chat_messages (project_id, role, content, task_id)
values ('a1000000-0000-4000-8000-000000000001', 'assistant', 'first answer',
        'a0a00000-0000-4000-8000-000000000001');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content, task_id)
    values ('a1000000-0000-4000-8000-000000000001', 'assistant', 'second answer',
            'a0a00000-0000-4000-8000-000000000001')$$,
  '23505',
  'duplicate key value violates unique constraint "chat_messages_one_answer_per_task"',
  'a task cannot have a second assistant message');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content, streaming)
    values ('a1000000-0000-4000-8000-000000000001', 'user', 'typing', true)$$,
  '23514',
  'new row for relation "chat_messages" violates check constraint "chat_messages_streaming_is_assistant"',
  'only an assistant message can be streaming');
select throws_ok(
  $$insert into public.chat_messages (project_id, role, content)
    values ('a1000000-0000-4000-8000-000000000001', 'tool', 'x')$$,
  '23514',
  'new row for relation "chat_messages" violates check constraint "chat_messages_role_check"',
  'an unknown message role is rejected');
select throws_ok(
  $$insert into public.build_logs (project_id, log_type, message)
    values ('a1000000-0000-4000-8000-000000000001', 'debug', 'x')$$,
  '23514',
  'new row for relation "build_logs" violates check constraint "build_logs_log_type_check"',
  'an unknown log type is rejected');

select * from finish();
rollback;
