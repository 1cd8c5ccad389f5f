-- complete_ai_tasks: many answers in one call, each entry meaning what
-- complete_ai_task means for it, each with its own outcome; a bad entry
-- refuses the whole call before anything is written.
begin;
select plan(38);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);
-- 1 plain, 2 streamed, 3 completed before, 4 cancelled, 5 held by attempt 1
-- but completed as attempt 2, 6 left running for the validation checks.
insert into public.ai_tasks (id, project_id, type, model)
select ('c0000000-0000-4000-8000-00000000000' || g)::uuid,
       'a1000000-0000-4000-8000-000000000001', 'chat_reply', 'openai/gpt-4o-mini'
from generate_series(1, 6) g;
do $$ begin perform public.claim_ai_task('worker-1', batch_size => 6); end $$;

select ok(public.stream_ai_task_reply('c0000000-0000-4000-8000-000000000002', 1, 'Partial'),
  'task 2 has a streamed partial reply');
create temp table earlier on commit drop as
  select 'streamed' as what, id from public.chat_messages
  where task_id = 'c0000000-0000-4000-8000-000000000002'
  union all
  select 'completed', public.complete_ai_task('c0000000-0000-4000-8000-000000000003', 1,
                                               'First answer', '{"tokens": 3}');
select is(public.cancel_ai_task('c0000000-0000-4000-8000-000000000004'), 'cancelled',
  'task 4 is cancelled while its attempt runs');

-- ================================================================ a mixed batch
create temp table batch on commit drop as
  select b.*, row_number() over () as n
  from public.complete_ai_tasks($$[
    {"task_id": "c0000000-0000-4000-8000-000000000001", "attempt": 1, "content": "One",
     "result": {"tokens": 12}, "model": "anthropic/claude-3-haiku"},
    {"task_id": "c0000000-0000-4000-8000-000000000004", "attempt": 1, "content": "Four"},
    {"task_id": "c0000000-0000-4000-8000-000000000002", "attempt": 1, "content": "Two, final",
     "result": {"tokens": 5}},
    {"task_id": "f0000000-0000-4000-8000-000000000009", "attempt": 1, "content": "Nobody"},
    {"task_id": "c0000000-0000-4000-8000-000000000003", "attempt": 1, "content": "Again",
     "result": null, "model": null},
    {"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 2, "content": "Five"}
  ]$$) b;

select results_eq(
  $$select task_id, outcome, status, attempt, message_id is not null from batch order by n$$,
  $$values
    ('c0000000-0000-4000-8000-000000000001'::uuid, 'completed'::text, 'completed'::text, 1,
     true),
    ('c0000000-0000-4000-8000-000000000004', 'not_held', 'cancelled', 1, false),
    ('c0000000-0000-4000-8000-000000000002', 'completed', 'completed', 1, true),
    ('f0000000-0000-4000-8000-000000000009', 'not_found', null, null, false),
    ('c0000000-0000-4000-8000-000000000003', 'already_completed', 'completed', 1, true),
    ('c0000000-0000-4000-8000-000000000005', 'not_held', 'running', 1, false)$$,
  'one row per entry, in the order given, with each entry''s own outcome');

-- ---------------------------------------------------------------- completed
select row_eq(
  $$select m.project_id, m.role, m.content, m.streaming, m.metadata
    from public.chat_messages m join batch b on b.message_id = m.id
    where b.task_id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('a1000000-0000-4000-8000-000000000001'::uuid, 'assistant'::text, 'One'::text, false,
      '{"tokens": 12}'::jsonb),
  'a completed entry''s message id is its final assistant message with the content');
select row_eq(
  $$select status, result, model, error, finished_at, locked_by, locked_until
    from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'$$,
  row('completed'::text, '{"tokens": 12}'::jsonb, 'anthropic/claude-3-haiku'::text,
      null::text, now(), null::text, null::timestamptz),
  'a completed entry''s task is completed with its result and model, lease released');
select results_eq(
  $$select l.log_type, l.message, l.metadata
    from public.build_logs l
    where l.task_id = 'c0000000-0000-4000-8000-000000000001'
      and l.metadata ->> 'event' = 'completed'$$,
  $$select 'info'::text, 'task completed by worker-1 on attempt 1'::text,
           jsonb_build_object('event', 'completed', 'worker', 'worker-1', 'attempt', 1,
                              'message_id', b.message_id, 'model', 'anthropic/claude-3-haiku')
    from batch b where b.task_id = 'c0000000-0000-4000-8000-000000000001'$$,
  'a completed entry writes one build log pointing at its answer');
select row_eq(
  $$select model, result from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-000000000002'$$,
  row('openai/gpt-4o-mini'::text, '{"tokens": 5}'::jsonb),
  'an entry without a model keeps the task''s model');

-- ---------------------------------------------------------------- streamed
select is(
  (select message_id from batch where task_id = 'c0000000-0000-4000-8000-000000000002'),
  (select id from earlier where what = 'streamed'),
  'a streamed reply''s message becomes the answer: the same message id');
select row_eq(
  $$select content, streaming, metadata from public.chat_messages
    where task_id = 'c0000000-0000-4000-8000-000000000002'$$,
  row('Two, final'::text, false, '{"tokens": 5}'::jsonb),
  'the streamed message is final: full content, no streaming mark, the result merged');
select is(
  (select count(*)::integer from public.chat_messages
   where task_id = 'c0000000-0000-4000-8000-000000000002'),
  1, 'completing a streamed reply adds no second message');

-- ---------------------------------------------------------------- already completed
select is(
  (select message_id from batch where task_id = 'c0000000-0000-4000-8000-000000000003'),
  (select id from earlier where what = 'completed'),
  'repeating a completion returns the message id of the first');
select row_eq(
  $$select m.content, t.result from public.chat_messages m
    join public.ai_tasks t on t.id = m.task_id
    where m.task_id = 'c0000000-0000-4000-8000-000000000003'$$,
  row('First answer'::text, '{"tokens": 3}'::jsonb),
  'the repeat changes neither the first answer nor the result');
select is(
  (select count(*)::integer from public.build_logs
   where task_id = 'c0000000-0000-4000-8000-000000000003'
     and metadata ->> 'event' = 'completed'),
  1, 'the repeat writes no second completion log');

-- ---------------------------------------------------------------- refused
select is(
  (select status from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000004'),
  'cancelled', 'a cancelled task stays cancelled');
select row_eq(
  $$select status, attempts, locked_by from public.ai_tasks
    where id = 'c0000000-0000-4000-8000-000000000005'$$,
  row('running'::text, 1, 'worker-1'::text),
  'a task completed with the wrong attempt keeps running under its holder');
select is(
  (select count(*)::integer from public.chat_messages
   where task_id in ('c0000000-0000-4000-8000-000000000004',
                     'c0000000-0000-4000-8000-000000000005',
                     'f0000000-0000-4000-8000-000000000009')),
  0, 'refused entries write no message');
select is(
  (select count(*)::integer from public.build_logs
   where metadata ->> 'event' = 'completed'
     and task_id in ('c0000000-0000-4000-8000-000000000004',
                     'c0000000-0000-4000-8000-000000000005')),
  0, 'refused entries write no completion log');

-- ================================================================ validation
-- Each bad call also carries a good first entry (task 6), to show that
-- nothing of the batch is written when any entry is refused.
create function pg_temp.with_good(bad text) returns text
language sql as $$
  select format('select * from public.complete_ai_tasks(%L)',
    '[{"task_id": "c0000000-0000-4000-8000-000000000006", "attempt": 1, "content": "ok"}, '
    || bad || ']')
$$;

-- The COLUMN field of the error a statement raises.
create function pg_temp.error_column(statement text) returns text
language plpgsql as $$
declare
  named text;
begin
  execute statement;
  return null;
exception when others then
  get stacked diagnostics named = column_name;
  return named;
end;
$$;

select throws_ok($$select * from public.complete_ai_tasks(null)$$,
  '22004', 'completions is required, got null', 'a missing array is refused');
select throws_ok($$select * from public.complete_ai_tasks('{"task_id": 1}')$$,
  '22023', 'completions must be a JSON array, got object', 'an object instead of an array');
select throws_ok(
  $$select * from public.complete_ai_tasks((select jsonb_agg('{}'::jsonb)
                                           from generate_series(1, 1001)))$$,
  '22023', 'completions must hold at most 1000 entries, got 1001 entries',
  'a batch over 1000 entries is refused');
select throws_ok(pg_temp.with_good('"c0000000-0000-4000-8000-000000000001"'),
  '22023', 'completions[1] must be a JSON object, got string', 'an entry that is no object');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1, "content": "x", '
    || '"atempt": 1}'),
  '22023', 'completions[1] must have only the fields task_id, attempt, content, result and '
  || 'model, got ''atempt''', 'a misspelt field is named rather than ignored');
select throws_ok(pg_temp.with_good('{"attempt": 1, "content": "x"}'),
  '22004', 'completions[1].task_id is required, got null', 'a missing task_id');
select throws_ok(pg_temp.with_good('{"task_id": "task-5", "attempt": 1, "content": "x"}'),
  '22023', 'completions[1].task_id must be a task id (a uuid string), got "task-5"',
  'a task_id that is no uuid');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 0, "content": "x"}'),
  '22023', 'completions[1].attempt must be the attempt claim_ai_task returned, got 0',
  'attempt 0, with complete_ai_task''s rule and the entry''s index');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1.5, "content": "x"}'),
  '22023', 'completions[1].attempt must be the attempt claim_ai_task returned, got 1.5',
  'a fractional attempt');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": "1", "content": "x"}'),
  '22023', 'completions[1].attempt must be the attempt claim_ai_task returned, got "1"',
  'an attempt sent as a string');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1}'),
  '22004', 'completions[1].content must be text of at most 200000 characters, got null',
  'missing content');
select throws_ok(pg_temp.with_good(format(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1, "content": "%s"}',
    repeat('x', 200001))),
  '22023', 'completions[1].content must be text of at most 200000 characters, '
  || 'got 200001 characters', 'a huge answer, its size named rather than echoed');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1, "content": "x", '
    || '"result": [1]}'),
  '22023', 'completions[1].result must be a JSON object, got array', 'a result that is no object');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000005", "attempt": 1, "content": "x", '
    || '"model": ""}'),
  '22023', 'completions[1].model must be 1 to 200 characters, got ''''', 'an empty model');
select throws_ok(pg_temp.with_good(
    '{"task_id": "c0000000-0000-4000-8000-000000000006", "attempt": 1, "content": "twice"}'),
  '22023', 'completions[1].task_id must not repeat the task of completions[0], '
  || 'got ''c0000000-0000-4000-8000-000000000006''', 'a task twice in one call');
select is(
  pg_temp.error_column(pg_temp.with_good('{"task_id": null, "attempt": 1, "content": "x"}')),
  'completions[1].task_id', 'the error names the entry''s field in COLUMN');
select row_eq(
  $$select t.status, (select count(*)::integer from public.chat_messages m
                      where m.task_id = t.id)
    from public.ai_tasks t where t.id = 'c0000000-0000-4000-8000-000000000006'$$,
  row('running'::text, 0),
  'after all the refused calls the good entry''s task is untouched: still running, no message');
select is(
  (select count(*)::integer from public.complete_ai_tasks('[]')),
  0, 'an empty batch is no error and returns no rows');

-- ================================================================ who may call
set local role anon;
select throws_ok($$select * from public.complete_ai_tasks('[]')$$,
  '42501', 'permission denied for function complete_ai_tasks', 'anon cannot complete tasks');
reset role;
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';
select throws_ok($$select * from public.complete_ai_tasks('[]')$$,
  '42501', 'permission denied for function complete_ai_tasks',
  'the project''s owner cannot complete its tasks');
reset role;
set local role service_role;
select is(
  (select outcome from public.complete_ai_tasks(
     '[{"task_id": "c0000000-0000-4000-8000-000000000006", "attempt": 1, "content": "ok"}]')),
  'completed', 'the service role completes tasks');
reset role;

select * from finish();
rollback;
