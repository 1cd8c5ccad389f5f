-- snooze_ai_task: a provider rate limit puts the task back without spending
-- its attempt, teaches the model's limit row, and is bounded per task.
begin;
select plan(31);

insert into auth.users (id, email) values
  ('f0000000-0000-4000-8000-000000000062', 'snooze@example.test');
insert into public.projects (id, owner_id, name, max_running_tasks)
select ('f1000000-0000-4000-8000-00000000006' || n)::uuid,
       'f0000000-0000-4000-8000-000000000062', 'snooze ' || n, 1000
from generate_series(1, 5) n;
update public.ai_queue_settings set snooze_default_seconds = 30, max_snoozes = 2;

-- One task per project, so a project-filtered claim picks exactly it.
insert into public.ai_tasks (id, project_id, type, model, max_attempts) values
  ('f2000000-0000-4000-8000-000000000621', 'f1000000-0000-4000-8000-000000000061',
   'chat_reply', null, 3),
  ('f2000000-0000-4000-8000-000000000622', 'f1000000-0000-4000-8000-000000000062',
   'chat_reply', null, 3),
  ('f2000000-0000-4000-8000-000000000623', 'f1000000-0000-4000-8000-000000000063',
   'chat_reply', 'm/other', 3),
  ('f2000000-0000-4000-8000-000000000624', 'f1000000-0000-4000-8000-000000000064',
   'chat_reply', 'm/last', 1);

create function pg_temp.claim(project_n integer) returns uuid language sql as $$
  select c.id from public.claim_ai_task('worker-snooze',
    ('f1000000-0000-4000-8000-00000000006' || project_n)::uuid) c
$$;

-- ---------------------------------------------------------------- no attempt spent
select is(pg_temp.claim(1), 'f2000000-0000-4000-8000-000000000621'::uuid,
  'the first task is claimed (attempt 1 of 3)');
select is(public.stream_ai_task_reply('f2000000-0000-4000-8000-000000000621', 1, 'Hal'),
  true, 'the worker had streamed part of a reply before the provider refused');
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000621', 1, 10), 'queued',
  'a snooze puts the held task back in the queue');
select row_eq(
  $$select status, attempts, max_attempts - attempts, snoozes, run_at, locked_by, locked_until
    from public.ai_tasks where id = 'f2000000-0000-4000-8000-000000000621'$$,
  row('queued'::text, 1, 3, 1, now() + interval '10 seconds', null::text, null::timestamptz),
  'the snoozed task keeps all 3 of its attempts and waits retry_after_seconds');
select row_eq(
  $$select error, errors from public.ai_tasks
    where id = 'f2000000-0000-4000-8000-000000000621'$$,
  row(null::text, '[]'::jsonb),
  'a snooze is not recorded as an error');
select is_empty(
  $$select 1 from public.chat_messages
    where task_id = 'f2000000-0000-4000-8000-000000000621'$$,
  'the partial streamed reply is removed');
select row_eq(
  $$select message, log_type, metadata ->> 'retry_in_seconds', metadata ->> 'snoozes',
           metadata ->> 'worker'
    from public.build_logs
    where task_id = 'f2000000-0000-4000-8000-000000000621'
      and metadata ->> 'event' = 'snoozed'$$,
  row('attempt 1 snoozed for 10 s, not spent: rate limited'::text, 'warning'::text,
      '10.000'::text, '1'::text, 'worker-snooze'::text),
  'the snooze is logged as a warning with its wait');

-- ---------------------------------------------------------------- the model learns
select is(
  (select paused_until from public.ai_model_limits where model = 'openai/gpt-4o-mini'),
  now() + interval '10 seconds',
  'the default model''s limit row learns the Retry-After');
select is(pg_temp.claim(2), null::uuid,
  'another task of the same model is not claimed before the Retry-After has passed');
select is(pg_temp.claim(3), 'f2000000-0000-4000-8000-000000000623'::uuid,
  'a task of another model is claimed meanwhile');
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000623', 1, 2), 'queued',
  'a task with its own model is snoozed for 2 s');
select is(
  (select paused_until from public.ai_model_limits where model = 'm/other'),
  now() + interval '2 seconds',
  'a task''s own model, not the default, learns its Retry-After');
update public.ai_tasks set run_at = now() where id = 'f2000000-0000-4000-8000-000000000623';
select is(pg_temp.claim(3), null::uuid,
  'a due task of a paused model still waits for the model');
update public.ai_model_limits set paused_until = now() - interval '1 second'
where model = 'm/other';
select is(pg_temp.claim(3), 'f2000000-0000-4000-8000-000000000623'::uuid,
  'once the pause has passed the task is claimed again');
-- Meanwhile another worker's snooze paused the model for 20 s.
update public.ai_model_limits set paused_until = now() + interval '20 seconds'
where model = 'm/other';
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000623', 2, 1), 'queued',
  'a second snooze with a Retry-After of 1 s');
select is(
  (select paused_until from public.ai_model_limits where model = 'm/other'),
  now() + interval '20 seconds',
  'a shorter Retry-After does not shorten the model''s pause');

-- ---------------------------------------------------------------- default delay, fencing
-- Time passes: the first task and its model are due again.
update public.ai_tasks set run_at = now() where id = 'f2000000-0000-4000-8000-000000000621';
update public.ai_model_limits set paused_until = now() - interval '1 second'
where model = 'openai/gpt-4o-mini';
select is(pg_temp.claim(1), 'f2000000-0000-4000-8000-000000000621'::uuid,
  'the snoozed task is claimed again, as attempt 2');
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000621', 2), 'queued',
  'a snooze without retry_after_seconds');
select is(
  (select run_at from public.ai_tasks where id = 'f2000000-0000-4000-8000-000000000621'),
  now() + interval '30 seconds',
  'without a Retry-After the task waits ai_queue_settings.snooze_default_seconds');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000621', 2, 10)$$,
  'AQ001',
  'task f2000000-0000-4000-8000-000000000621 is not held by attempt 2: '
  'it is queued at attempt 2',
  'a repeated snooze after the task went back to the queue is refused');

update public.ai_tasks set run_at = now() where id = 'f2000000-0000-4000-8000-000000000621';
update public.ai_model_limits set paused_until = null where model = 'openai/gpt-4o-mini';
select is(pg_temp.claim(1), 'f2000000-0000-4000-8000-000000000621'::uuid,
  'the task is claimed a third time, as attempt 3');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000621', 2, 10)$$,
  'AQ001',
  'task f2000000-0000-4000-8000-000000000621 is not held by attempt 2: '
  'it is running at attempt 3',
  'a snooze by an attempt that no longer holds the task is refused');

-- ---------------------------------------------------------------- the bound
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000621', 3, 5), 'queued',
  'the third rate limit of a task allowed 2 snoozes goes through fail_ai_task');
select row_eq(
  $$select status, attempts, max_attempts - attempts, snoozes, run_at,
           error, jsonb_array_length(errors), errors -> 0 ->> 'error'
    from public.ai_tasks where id = 'f2000000-0000-4000-8000-000000000621'$$,
  row('queued'::text, 3, 2, 2, now() + interval '5 seconds',
      'rate limited (after 2 snoozes, the most a task may take)'::text, 1,
      'rate limited (after 2 snoozes, the most a task may take)'::text),
  'past max_snoozes a rate limit is a failed attempt: recorded, spent, retried after it');
select is(
  (select paused_until from public.ai_model_limits where model = 'openai/gpt-4o-mini'),
  now() + interval '5 seconds',
  'the model learns the Retry-After of a rate limit past the bound too');

update public.ai_tasks set snoozes = 2 where id = 'f2000000-0000-4000-8000-000000000624';
select is(pg_temp.claim(4), 'f2000000-0000-4000-8000-000000000624'::uuid,
  'a task with one attempt and no snoozes left is claimed');
select is(public.snooze_ai_task('f2000000-0000-4000-8000-000000000624', 1, 5,
                                'HTTP 429 from the provider'), 'failed',
  'a rate limit past the bound on the last attempt fails the task');
select row_eq(
  $$select status, error, finished_at is not null
    from public.ai_tasks where id = 'f2000000-0000-4000-8000-000000000624'$$,
  row('failed'::text,
      'HTTP 429 from the provider (after 2 snoozes, the most a task may take)'::text, true),
  'the failed task keeps the provider''s reason as its error');

-- ---------------------------------------------------------------- not held
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-00000000dead', 1)$$,
  'AQ002', 'task f2000000-0000-4000-8000-00000000dead not found',
  'snoozing an unknown task is refused as not found');
update public.ai_model_limits set paused_until = null where model = 'openai/gpt-4o-mini';
select ok(public.complete_ai_task(pg_temp.claim(2), 1, 'answer') is not null,
  'another task completes');
select throws_ok(
  $$select public.snooze_ai_task('f2000000-0000-4000-8000-000000000622', 1)$$,
  'AQ001',
  'task f2000000-0000-4000-8000-000000000622 is not held by attempt 1: '
  'it is completed at attempt 1',
  'a completed task cannot be snoozed');

select * from finish();
rollback;
