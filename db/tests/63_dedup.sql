-- enqueue_ai_task with an idempotency_key: one unfinished task per key and
-- project. Two sessions racing on one key are proven in db/fairness_test.ts.
begin;
select plan(20);

insert into auth.users (id, email) values
  ('f0000000-0000-4000-8000-000000000631', 'dedup@example.test'),
  ('f0000000-0000-4000-8000-000000000632', 'other@example.test');
insert into public.projects (id, owner_id, name, max_running_tasks) values
  ('f1000000-0000-4000-8000-000000000631', 'f0000000-0000-4000-8000-000000000631',
   'dedup', 100),
  ('f1000000-0000-4000-8000-000000000632', 'f0000000-0000-4000-8000-000000000631',
   'dedup too', 100);

create temp table ids (name text primary key, id uuid);
grant all on ids to authenticated;

-- ---------------------------------------------------------------- one key, one task
insert into ids
select 'first', public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
  message => 'Build me a landing page', idempotency_key => 'request-1');
select is(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
    message => 'Build me a landing page', idempotency_key => 'request-1'),
  (select id from ids where name = 'first'),
  'a second enqueue with the same key returns the first task''s id');
select is(
  (select count(*)::integer from public.ai_tasks where idempotency_key = 'request-1'), 1,
  'two enqueues with one key leave one task');
select is(
  (select count(*)::integer from public.chat_messages
   where project_id = 'f1000000-0000-4000-8000-000000000631'), 1,
  'and one user message: the repeat writes nothing');
select is(
  (select count(*)::integer from public.build_logs
   where task_id = (select id from ids where name = 'first')
     and metadata ->> 'event' = 'queued'
     and metadata ->> 'idempotency_key' = 'request-1'), 1,
  'and one queued log, which names the key');

select isnt(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
    idempotency_key => 'request-2'),
  (select id from ids where name = 'first'),
  'another key queues another task');
select isnt(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000632',
    idempotency_key => 'request-1'),
  (select id from ids where name = 'first'),
  'the same key in another project queues another task: keys are per project');
select isnt(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631'),
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631'),
  'without a key every enqueue queues a task');

-- ---------------------------------------------------------------- running, then finished
select is(
  (select c.id from public.claim_ai_task('worker-dedup',
     'f1000000-0000-4000-8000-000000000631') c),
  (select id from ids where name = 'first'),
  'the keyed task is claimed');
select is(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
    idempotency_key => 'request-1'),
  (select id from ids where name = 'first'),
  'a repeat while the task runs still returns it');

select ok(
  public.complete_ai_task((select id from ids where name = 'first'), 1, 'Here it is')
    is not null,
  'the keyed task completes');
insert into ids
select 'second', public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
  idempotency_key => 'request-1');
select isnt((select id from ids where name = 'second'), (select id from ids where name = 'first'),
  'once the task has finished its key queues a new task');

select is(public.cancel_ai_task((select id from ids where name = 'second')), 'cancelled',
  'the second keyed task is cancelled');
select isnt(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
    idempotency_key => 'request-1'),
  (select id from ids where name = 'second'),
  'a cancelled task''s key may be used again as well');

-- ---------------------------------------------------------------- the index behind it
select throws_ok(
  $$insert into public.ai_tasks (project_id, type, idempotency_key)
    values ('f1000000-0000-4000-8000-000000000631', 'chat_reply', 'request-1')$$,
  '23505', null,
  'the partial unique index refuses a second unfinished task with the key, '
  'which is what makes racing enqueues safe');

-- ---------------------------------------------------------------- retry of a keyed task
select is(public.retry_ai_task((select id from ids where name = 'second')), 'queued',
  'a cancelled task whose key a newer task holds can still be retried');
select is(
  (select idempotency_key from public.ai_tasks where id = (select id from ids where name = 'second')),
  null,
  'the retried task gives its key up to the newer unfinished task');
select is(
  (select count(*)::integer from public.ai_tasks
   where project_id = 'f1000000-0000-4000-8000-000000000631'
     and idempotency_key = 'request-1' and status in ('queued', 'running')), 1,
  'one unfinished task of the project keeps the key');

-- ---------------------------------------------------------------- as the browser
set local role authenticated;
set local request.jwt.claims = '{"sub": "f0000000-0000-4000-8000-000000000631", "role": "authenticated"}';
insert into ids
select 'browser', public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
  idempotency_key => 'click-7');
select is(
  public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
    idempotency_key => 'click-7'),
  (select id from ids where name = 'browser'),
  'a signed-in owner''s double click yields one task');

set local request.jwt.claims = '{"sub": "f0000000-0000-4000-8000-000000000632", "role": "authenticated"}';
select throws_ok(
  $$select public.enqueue_ai_task('f1000000-0000-4000-8000-000000000631',
      idempotency_key => 'click-7')$$,
  'AQ002', 'project f1000000-0000-4000-8000-000000000631 not found',
  'another user''s key cannot fetch the owner''s task id: the project is not found');
reset role;
select is(
  (select count(*)::integer from public.ai_tasks where idempotency_key = 'click-7'), 1,
  'the refused call queued nothing');

select * from finish();
rollback;
