-- ai_task_stats on a known data set: exact counts, the oldest due task,
-- throughput, failure rates and run-time percentiles over 5 and 60 minutes,
-- tokens and cost per project and day, and the project filter. now() is fixed
-- inside the transaction, so every figure below is exact.
begin;
select plan(26);

delete from public.ai_tasks;

insert into auth.users (id, email) values
  ('74000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id) values
  ('74100000-0000-4000-8000-000000000001', '74000000-0000-4000-8000-000000000001'),
  ('74100000-0000-4000-8000-000000000002', '74000000-0000-4000-8000-000000000001');

-- A finished task of project 1 (or `project`) that ran `run` and finished
-- `ago` before now.
create function pg_temp.finished(status text, ago interval, run interval,
                                 result jsonb default '{}',
                                 project integer default 1) returns void
language sql as $$
  insert into public.ai_tasks (project_id, type, status, attempts, result,
                               started_at, finished_at, created_at)
  values (('74100000-0000-4000-8000-00000000000' || project)::uuid, 'chat_reply', status,
          case when status = 'cancelled' then 0 else 1 end,
          case when status = 'completed' then result end,
          case when status <> 'cancelled' then now() - ago - run end,
          now() - ago, now() - ago - coalesce(run, interval '0') - interval '1 minute')
$$;

-- How long ago `hour` o'clock UTC was, `days` calendar days before today.
create function pg_temp.ago(days integer, hour integer) returns interval
language sql as $$
  select now() - ((date_trunc('day', now() at time zone 'UTC')
                   - make_interval(days => days) + make_interval(hours => hour))
                  at time zone 'UTC')
$$;

-- Last 5 minutes: four completed, running 1, 2, 3 and 4 s; one failed.
select pg_temp.finished('completed', interval '1 minute', interval '1 second');
select pg_temp.finished('completed', interval '2 minutes', interval '2 seconds');
select pg_temp.finished('completed', interval '3 minutes', interval '3 seconds');
select pg_temp.finished('completed', interval '4 minutes', interval '4 seconds');
select pg_temp.finished('failed', interval '4 minutes', interval '30 seconds');
-- 5 to 60 minutes ago: two completed (10 s, 20 s), one failed, one cancelled.
select pg_temp.finished('completed', interval '10 minutes', interval '10 seconds');
select pg_temp.finished('completed', interval '30 minutes', interval '20 seconds');
select pg_temp.finished('failed', interval '30 minutes', interval '1 second');
select pg_temp.finished('cancelled', interval '20 minutes', null);
-- Two and three days ago at noon UTC, with the figures the runner records:
-- top-level fields as runner/handlers.ts writes them, or an OpenAI usage object.
select pg_temp.finished('completed',
  pg_temp.ago(2, 12),
  interval '5 seconds',
  '{"prompt_tokens": 100, "completion_tokens": 20, "cost": 0.0015, "latency_ms": 900}');
select pg_temp.finished('completed',
  pg_temp.ago(2, 11),
  interval '5 seconds',
  '{"usage": {"prompt_tokens": 50, "completion_tokens": 5, "cost": 0.0005}, "latency_ms": 1100}');
select pg_temp.finished('completed',
  pg_temp.ago(2, 10),
  interval '5 seconds', '{"prompt_tokens": "lots", "completion_tokens": null}');
select pg_temp.finished('completed',
  pg_temp.ago(3, 12),
  interval '5 seconds', '{"prompt_tokens": 7, "completion_tokens": 3, "cost": 0.25}', 2);
-- Older than the 7-day usage window.
select pg_temp.finished('completed', interval '8 days', interval '5 seconds',
  '{"prompt_tokens": 1000000}');

-- Live tasks of project 1: due for 90 s and 30 s, one waiting for a retry,
-- one running, one running on an expired lease.
insert into public.ai_tasks (project_id, type, run_at, created_at) values
  ('74100000-0000-4000-8000-000000000001', 'chat_reply', now() - interval '90 seconds',
   now() - interval '90 seconds'),
  ('74100000-0000-4000-8000-000000000001', 'chat_reply', now() - interval '30 seconds',
   now() - interval '30 seconds'),
  ('74100000-0000-4000-8000-000000000001', 'chat_reply', now() + interval '60 seconds',
   now() - interval '10 minutes');
insert into public.ai_tasks (project_id, type, status, attempts, started_at, locked_by,
                             locked_until) values
  ('74100000-0000-4000-8000-000000000001', 'chat_reply', 'running', 1, now(), 'w1',
   now() + interval '5 minutes'),
  ('74100000-0000-4000-8000-000000000001', 'chat_reply', 'running', 1,
   now() - interval '10 minutes', 'w2', now() - interval '1 minute');
-- Project 2 finished one more task a minute ago, running 9 s.
select pg_temp.finished('completed', interval '1 minute', interval '9 seconds', '{}', 2);

create temporary table stats on commit drop as
  select public.ai_task_stats('74100000-0000-4000-8000-000000000001') as s;

-- ================================================================ counts
select is((select s -> 'counts' from stats),
  '{"queued": 3, "due": 2, "waiting_retry": 1, "running": 2, "lease_expired": 1,
    "oldest_due_seconds": 90.000, "completed": 9, "failed": 2, "cancelled": 1}'::jsonb,
  'counts: live tasks, and tasks finished in the last 7 days, of project 1');

-- ================================================================ 5 minutes
select is((select s -> 'windows' -> 0 -> 'minutes' from stats), '5'::jsonb,
  'the first window is the last 5 minutes');
select is((select s -> 'windows' -> 0 ->> 'completed' from stats), '4',
  '5 min: four completed');
select is((select s -> 'windows' -> 0 ->> 'failed' from stats), '1', '5 min: one failed');
select is((select s -> 'windows' -> 0 ->> 'throughput_per_minute' from stats), '0.800',
  '5 min: 4 completed over 5 minutes is 0.8 a minute');
select is((select s -> 'windows' -> 0 ->> 'failure_rate' from stats), '0.2000',
  '5 min: 1 failed of 5 finished is a failure rate of 0.2');
select is((select s -> 'windows' -> 0 ->> 'run_p50_seconds' from stats), '2.500',
  '5 min: the median of 1, 2, 3, 4 s is 2.5 s');
select is((select s -> 'windows' -> 0 ->> 'run_p95_seconds' from stats), '3.850',
  '5 min: p95 of 1, 2, 3, 4 s interpolates to 3.85 s');

-- ================================================================ 60 minutes
select is((select s -> 'windows' -> 1 -> 'minutes' from stats), '60'::jsonb,
  'the second window is the last 60 minutes');
select row_eq(
  $$select (s -> 'windows' -> 1 ->> 'completed')::integer,
           (s -> 'windows' -> 1 ->> 'failed')::integer,
           (s -> 'windows' -> 1 ->> 'cancelled')::integer from stats$$,
  row(6, 2, 1), '60 min: six completed, two failed, one cancelled');
select is((select s -> 'windows' -> 1 ->> 'throughput_per_minute' from stats), '0.100',
  '60 min: 6 completed over 60 minutes is 0.1 a minute');
select is((select s -> 'windows' -> 1 ->> 'failure_rate' from stats), '0.2500',
  '60 min: 2 failed of 8 finished; cancelled tasks do not count');
select is((select s -> 'windows' -> 1 ->> 'run_p50_seconds' from stats), '3.500',
  '60 min: the median of 1, 2, 3, 4, 10, 20 s is 3.5 s');
select is((select s -> 'windows' -> 1 ->> 'run_p95_seconds' from stats), '17.500',
  '60 min: p95 of 1, 2, 3, 4, 10, 20 s interpolates to 17.5 s');

-- ================================================================ usage per project and day
select is(
  (select u from stats, jsonb_array_elements(s -> 'usage') u
   where u ->> 'day' = ((now() at time zone 'UTC')::date - 2)::text),
  jsonb_build_object('project_id', '74100000-0000-4000-8000-000000000001',
    'day', ((now() at time zone 'UTC')::date - 2)::text,
    'completed', 3, 'failed', 0, 'prompt_tokens', 150, 'completion_tokens', 25,
    'cost', 0.0020, 'model_latency_p50_ms', 1000),
  'two days ago: tokens and cost summed from both spellings, a non-number ignored');
select is(
  (select count(*)::integer from stats, jsonb_array_elements(s -> 'usage') u
   where u ->> 'project_id' <> '74100000-0000-4000-8000-000000000001'),
  0, 'a project''s stats hold no other project''s usage');
select is(
  (select sum((u ->> 'prompt_tokens')::integer)::integer
   from stats, jsonb_array_elements(s -> 'usage') u),
  150, 'a task finished before the usage window is left out');

-- ================================================================ all projects
select is((public.ai_task_stats() -> 'windows' -> 0 ->> 'completed'), '5',
  'without a project the last 5 minutes hold project 2''s task too');
select is((public.ai_task_stats() -> 'windows' -> 0 ->> 'run_p50_seconds'), '3.000',
  'and the median of 1, 2, 3, 4, 9 s is 3 s');
select is(
  (select u from jsonb_array_elements(public.ai_task_stats() -> 'usage') u
   where u ->> 'project_id' = '74100000-0000-4000-8000-000000000002'
     and u ->> 'day' = ((now() at time zone 'UTC')::date - 3)::text),
  jsonb_build_object('project_id', '74100000-0000-4000-8000-000000000002',
    'day', ((now() at time zone 'UTC')::date - 3)::text,
    'completed', 1, 'failed', 0, 'prompt_tokens', 7, 'completion_tokens', 3,
    'cost', 0.25, 'model_latency_p50_ms', null),
  'project 2 has its own usage row');
select is((public.ai_task_stats(usage_days => 1) -> 'counts' ->> 'completed'), '7',
  'usage_days narrows the finished counts to the last day');

-- ================================================================ dispatch and errors
select is((select (s -> 'dispatch') - 'cron_jobs'::text from stats),
  '{"pg_net": false, "endpoint_source": null, "enabled": true}'::jsonb,
  'the stats say there is no pg_net and no runner URL, and never show a key');
select is((select s -> 'realtime' from stats), 'null'::jsonb,
  'without the supabase_realtime publication the stats say so');
create publication supabase_realtime for table public.chat_messages;
select is(public.ai_task_stats() -> 'realtime', '["public.chat_messages"]'::jsonb,
  'with it they list the queue tables it publishes');
select throws_ok($$select public.ai_task_stats(usage_days => 0)$$, '22023',
  'usage_days must be between 1 and 366, got 0', 'a bad usage_days is refused with 22023');
set local role authenticated;
select throws_ok($$select public.ai_task_stats()$$, '42501', null,
  'a signed-in user cannot read the stats of all projects');
reset role;

select * from finish();
rollback;
