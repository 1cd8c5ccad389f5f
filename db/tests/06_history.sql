-- The chat history a claim hands out with a task: the project's last ten
-- messages written up to the task's creation, oldest first, never a reply
-- still being streamed, never another project's messages.
begin;
select plan(7);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000),
  ('a2000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 1000);

-- Twelve messages, m1 .. m12, a minute apart; m11 and m12 share one instant,
-- so only their insertion order (seq) tells them apart.
insert into public.chat_messages (project_id, role, content, created_at)
select 'a1000000-0000-4000-8000-000000000001',
       case when i % 2 = 1 then 'user' else 'assistant' end,
       'm' || i,
       now() - make_interval(mins => 30 - least(i, 11))
from generate_series(1, 12) i
order by i;
-- Another task's reply, still streaming, before the task below was created.
insert into public.ai_tasks (id, project_id, type, status, attempts, locked_by, locked_until)
values ('c0000000-0000-4000-8000-0000000000ff', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply', 'running', 1, 'w', now() + interval '5 minutes');
insert into public.chat_messages (project_id, role, content, task_id, streaming, created_at)
values ('a1000000-0000-4000-8000-000000000001', 'assistant', 'half a repl',
        'c0000000-0000-4000-8000-0000000000ff', true, now() - interval '10 minutes');
-- Another project's message in the same minutes.
insert into public.chat_messages (project_id, role, content, created_at)
values ('a2000000-0000-4000-8000-000000000002', 'user', 'elsewhere',
        now() - interval '9 minutes');

-- The task, created eight minutes ago; a message written after it.
insert into public.ai_tasks (id, project_id, type, created_at)
values ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply', now() - interval '8 minutes');
insert into public.chat_messages (project_id, role, content, created_at)
values ('a1000000-0000-4000-8000-000000000001', 'user', 'too late',
        now() - interval '1 minute');

create temp table claimed on commit drop as
  select * from public.claim_ai_task('worker-1',
    project_id => 'a1000000-0000-4000-8000-000000000001');

select is((select id from claimed), 'c0000000-0000-4000-8000-000000000001'::uuid,
  'the task with history is claimed');
select is(jsonb_array_length((select history from claimed)), 10,
  'the history holds at most ten messages');
select is(
  (select array_agg(e ->> 'content' order by n)
   from claimed, jsonb_array_elements(history) with ordinality x(e, n)),
  array['m3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9', 'm10', 'm11', 'm12'],
  'they are the ten latest, oldest first, same-instant messages in insertion order');
select is(
  (select history -> 0 from claimed),
  '{"role": "user", "content": "m3"}'::jsonb,
  'each entry is {role, content} and nothing else');
select ok(
  not exists (select 1 from claimed, jsonb_array_elements(history) e
              where e ->> 'content' in ('too late', 'half a repl', 'elsewhere')),
  'messages after the task''s creation, streaming replies and other projects are left out');

-- ---------------------------------------------------------------- enqueue with a message
-- A message queued with its task, in the same statement, is the history's last entry.
select isnt(
  public.enqueue_ai_task('a2000000-0000-4000-8000-000000000002', message => 'What now?'),
  null, 'the service enqueues a task with the user''s message');
select is(
  (select history from public.claim_ai_task('worker-1',
     project_id => 'a2000000-0000-4000-8000-000000000002')),
  '[{"role": "user", "content": "elsewhere"}, {"role": "user", "content": "What now?"}]'::jsonb,
  'the task''s own message closes its history');

select * from finish();
rollback;
