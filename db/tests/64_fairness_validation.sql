-- Bad arguments and wrong roles for snooze, idempotency keys, settings and
-- model limits. Every bad call is refused before its first write, with
-- 22023 (22004 for a missing value) naming the argument.
begin;
select plan(30);

insert into auth.users (id, email) values
  ('f0000000-0000-4000-8000-000000000641', 'checks@example.test');
insert into public.projects (id, owner_id, name, max_running_tasks) values
  ('f1000000-0000-4000-8000-000000000641', 'f0000000-0000-4000-8000-000000000641',
   'checks', 100);
insert into public.ai_tasks (id, project_id, type) values
  ('f2000000-0000-4000-8000-000000000641', 'f1000000-0000-4000-8000-000000000641',
   'chat_reply');
do $$ begin perform public.claim_ai_task('worker-checks'); end $$;

create temp table before_calls on commit drop as
  select (select md5(string_agg(t::text, ',' order by t.id)) from public.ai_tasks t) as tasks,
         (select count(*) from public.build_logs) as logs,
         (select count(*) from public.ai_model_limits) as limits;

create function pg_temp.error_column(statement text) returns text
language plpgsql as $$
declare
  column_name text;
begin
  execute statement;
  return null;
exception when others then
  get stacked diagnostics column_name = column_name;
  return column_name;
end;
$$;

-- ---------------------------------------------------------------- snooze_ai_task
select throws_ok(
  $$select public.snooze_ai_task(null, 1)$$,
  '22004', 'task_id is required, got null', 'snooze: a missing task_id is refused');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', null)$$,
  '22004', 'attempt must be the attempt claim_ai_task returned, got null',
  'snooze: a missing attempt is refused');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 0)$$,
  '22023', 'attempt must be the attempt claim_ai_task returned, got 0',
  'snooze: attempt 0 is refused');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, -1)$$,
  '22023', 'retry_after_seconds must be between 0 and 86400, got -1',
  'snooze: a negative Retry-After is refused');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, 86401)$$,
  '22023', 'retry_after_seconds must be between 0 and 86400, got 86401',
  'snooze: a Retry-After over a day is refused');
select is(
  pg_temp.error_column(
    $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, 86401)$$),
  'retry_after_seconds', 'snooze: the error''s COLUMN field names the argument');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, 5, '  ')$$,
  '22023', 'reason must describe the provider''s answer, got ''  ''',
  'snooze: a blank reason is refused');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, 5, null)$$,
  '22004', 'reason must describe the provider''s answer, got null',
  'snooze: a null reason is refused');

-- ---------------------------------------------------------------- enqueue_ai_task
select throws_ok(
  $$select public.enqueue_ai_task('f1000000-0000-4000-8000-000000000641',
      idempotency_key => '')$$,
  '22023', 'idempotency_key must be 1 to 200 characters, got ''''',
  'enqueue: an empty idempotency_key is refused');
select throws_ok(
  $$select public.enqueue_ai_task('f1000000-0000-4000-8000-000000000641',
      idempotency_key => '   ')$$,
  '22023', 'idempotency_key must be 1 to 200 characters, got ''   ''',
  'enqueue: a blank idempotency_key is refused');
select throws_ok(
  format($$select public.enqueue_ai_task('f1000000-0000-4000-8000-000000000641',
      idempotency_key => %L)$$, repeat('k', 201)),
  '22023', null, 'enqueue: an idempotency_key over 200 characters is refused');
select is(
  pg_temp.error_column(
    $$select public.enqueue_ai_task('f1000000-0000-4000-8000-000000000641',
        idempotency_key => '')$$),
  'idempotency_key', 'enqueue: the error''s COLUMN field names idempotency_key');

select row_eq(
  $$select (select md5(string_agg(t::text, ',' order by t.id)) from public.ai_tasks t),
           (select count(*) from public.build_logs),
           (select count(*) from public.ai_model_limits)$$,
  (select row(tasks, logs, limits) from before_calls),
  'the refused calls changed no task, log or model limit');

-- ---------------------------------------------------------------- settings and limits
select throws_ok(
  $$update public.ai_queue_settings set default_max_running_tasks = 0$$,
  '23514', null, 'settings: a default cap below 1 is refused');
select throws_ok(
  $$update public.ai_queue_settings set max_snoozes = -1$$,
  '23514', null, 'settings: a negative max_snoozes is refused');
select throws_ok(
  $$update public.ai_queue_settings set snooze_default_seconds = 86401$$,
  '23514', null, 'settings: a default snooze over a day is refused');
select throws_ok(
  $$insert into public.ai_queue_settings (id) values (false)$$,
  '23514', null, 'settings: there is only ever one settings row');
select throws_ok(
  $$update public.projects set max_running_tasks = 0
    where id = 'f1000000-0000-4000-8000-000000000641'$$,
  '23514', null, 'projects: a running cap below 1 is refused');
select throws_ok(
  $$insert into public.ai_model_limits (model, requests_per_minute) values ('m/x', -1)$$,
  '23514', null, 'model limits: a negative requests_per_minute is refused');
select throws_ok(
  $$insert into public.ai_model_limits (model, tokens_per_minute) values ('', 10)$$,
  '23514', null, 'model limits: an empty model name is refused');

-- ---------------------------------------------------------------- roles
set local role anon;
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1)$$,
  '42501', null, 'anon cannot snooze a task');
select throws_ok($$select * from public.ai_queue_settings$$, '42501', null,
  'anon cannot read the queue settings');
reset role;

set local role authenticated;
set local request.jwt.claims =
  '{"sub": "f0000000-0000-4000-8000-000000000641", "role": "authenticated"}';
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1)$$,
  '42501', null, 'even the project''s owner cannot snooze a task: that is the worker''s');
select throws_ok($$select * from public.ai_queue_settings$$, '42501', null,
  'a signed-in user cannot read the queue settings');
select throws_ok($$update public.ai_model_limits set requests_per_minute = 100000$$,
  '42501', null, 'a signed-in user cannot raise a model''s limit');
select throws_ok(
  $$update public.projects set max_running_tasks = 1000
    where id = 'f1000000-0000-4000-8000-000000000641'$$,
  '42501', null, 'a project''s owner cannot raise the project''s running cap');
reset role;

set local role service_role;
select lives_ok(
  $$update public.ai_queue_settings set default_max_running_tasks = 6$$,
  'the service changes the queue settings');
select lives_ok(
  $$insert into public.ai_model_limits (model, requests_per_minute) values ('m/svc', 60)$$,
  'the service sets a model''s limit');
select lives_ok(
  $$update public.projects set max_running_tasks = 2
    where id = 'f1000000-0000-4000-8000-000000000641'$$,
  'the service sets a project''s running cap');
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000641', 1, 5), 'queued',
  'the service (the worker) snoozes a held task');
reset role;

select * from finish();
rollback;
