-- The functions a worker and an enqueuer call at volume read the tables that
-- grow (tasks, messages, logs) through indexes only. Here the tables are
-- tiny, which is exactly when the planner would rather read them whole; a
-- session keeps those plans, and once the queue holds thousands of tasks every
-- call would read them all. pg_stat_xact_user_tables counts this
-- transaction's sequential scans and the rows its scans read.
begin;
select plan(8);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);
insert into public.ai_tasks (project_id, type, payload)
select 'a1000000-0000-4000-8000-000000000001', 'chat_reply', jsonb_build_object('n', g)
from generate_series(1, 60) g;

-- A labelled snapshot of the counters of the tables that grow.
create temp table scans (label text, relname name, seq_scan bigint, rows_read bigint)
  on commit drop;
create function pg_temp.count_scans(label text) returns void language sql as $$
  insert into scans
  select label, s.relname, s.seq_scan, s.idx_tup_fetch + s.seq_tup_read
  from pg_stat_xact_user_tables s
  where s.schemaname = 'public' and s.relname in ('ai_tasks', 'chat_messages', 'build_logs')
$$;
-- Sequential scans of the queue's tables between two counts.
create function pg_temp.scans_between(from_label text, to_label text) returns text
language sql as $$
  select coalesce(string_agg(b.relname || ' +' || (b.seq_scan - coalesce(a.seq_scan, 0)),
                             ', ' order by b.relname), '')
  from scans b
  left join scans a on a.relname = b.relname and a.label = from_label
  where b.label = to_label and b.seq_scan > coalesce(a.seq_scan, 0)
$$;

select pg_temp.count_scans('start');
-- Eight rounds: plpgsql plans a statement afresh five times, then may keep a
-- generic plan; both kinds are exercised.
do $$
declare
  round integer;
begin
  for round in 1 .. 8 loop
    perform public.complete_ai_tasks((
      select jsonb_agg(jsonb_build_object('task_id', c.id, 'attempt', c.attempt,
                                          'content', 'answer ' || round))
      from public.claim_ai_task('worker-1', null, 3, 60) c));
  end loop;
end;
$$;
select pg_temp.count_scans('claim_complete');
select is(pg_temp.scans_between('start', 'claim_complete'), '',
  'claim_ai_task and complete_ai_tasks read no table whole');

do $$
declare
  task record;
begin
  for task in select * from public.claim_ai_task('worker-1', null, 8, 60) loop
    perform public.complete_ai_task(task.id, task.attempt, 'answer');
  end loop;
end;
$$;
select pg_temp.count_scans('complete_one');
select is(pg_temp.scans_between('claim_complete', 'complete_one'), '',
  'complete_ai_task reads no table whole');

do $$
declare
  task record;
begin
  for task in select * from public.claim_ai_task('worker-1', null, 8, 60) loop
    perform public.extend_ai_task_lease(task.id, task.attempt, 120);
    perform public.stream_ai_task_reply(task.id, task.attempt, 'partial');
    perform public.fail_ai_task(task.id, task.attempt, 'model error', true);
  end loop;
end;
$$;
select pg_temp.count_scans('lease_fail');
select is(pg_temp.scans_between('complete_one', 'lease_fail'), '',
  'extend_ai_task_lease, stream_ai_task_reply and fail_ai_task read no table whole');

do $$
declare
  task record;
  n integer := 0;
begin
  for task in select * from public.claim_ai_task('worker-1', null, 8, 60) loop
    n := n + 1;
    if n % 2 = 0 then
      perform public.release_ai_task(task.id, task.attempt);
    else
      perform public.snooze_ai_task(task.id, task.attempt, 30);
    end if;
  end loop;
end;
$$;
select pg_temp.count_scans('release_snooze');
select is(pg_temp.scans_between('lease_fail', 'release_snooze'), '',
  'release_ai_task and snooze_ai_task read no table whole');

do $$
begin
  for n in 1 .. 8 loop
    perform public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', 'chat_reply',
      jsonb_build_object('n', n), 'question ' || n, idempotency_key => 'key-' || n);
  end loop;
end;
$$;
select pg_temp.count_scans('enqueue');
select is(pg_temp.scans_between('release_snooze', 'enqueue'), '',
  'enqueue_ai_task reads no table whole');

-- The counter itself works: a plain count of a tiny table is a sequential scan.
do $$ begin perform count(*) from public.ai_tasks; end $$;
select pg_temp.count_scans('control');
select is(pg_temp.scans_between('enqueue', 'control'), 'ai_tasks +1',
  'a plain read of the whole table is counted');

-- ---------------------------------------------------------------- stale statistics
-- Autovacuum usually visits ai_tasks while the queue is empty, so the
-- statistics of the indexes on queued tasks say they are empty when a burst
-- arrives (a partial index vacuumed while empty is estimated empty however
-- much it has grown since). Whatever plan the claim makes from that, it must
-- read tens of rows per task it hands out, not every queued task once per
-- project. The test sets those statistics to zero itself.
-- (The snoozes above paused the default model; lift the pause.)
delete from public.ai_model_limits;
insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000002', 'burst@example.test');
insert into public.projects (owner_id, name, max_running_tasks)
select 'a0000000-0000-4000-8000-000000000002', 'burst ' || g, 1000
from generate_series(1, 100) g;
insert into public.ai_tasks (project_id, type, payload)
select p.id, 'chat_reply', jsonb_build_object('n', g)
from public.projects p, generate_series(1, 50) g
where p.name like 'burst %';
update pg_catalog.pg_class set reltuples = 0
where oid in (select i.indexrelid from pg_catalog.pg_index i
              where i.indrelid = 'public.ai_tasks'::regclass and i.indpred is not null);

-- Rows of ai_tasks read between two snapshots.
create function pg_temp.fetched_between(from_label text, to_label text) returns bigint
language sql as $$
  select b.rows_read - a.rows_read from scans a, scans b
  where a.label = from_label and b.label = to_label
    and a.relname = 'ai_tasks' and b.relname = 'ai_tasks'
$$;

select pg_temp.count_scans('before_ones');
do $$ begin
  for round in 1 .. 10 loop
    perform public.claim_ai_task('worker-burst', null, 1, 60);
  end loop;
end $$;
select pg_temp.count_scans('after_ones');
select cmp_ok(pg_temp.fetched_between('before_ones', 'after_ones'), '<', 2000::bigint,
  'ten claims of one task from a burst of 5,000 read tens of rows each, not the queue');

do $$ begin
  for round in 1 .. 10 loop
    perform public.claim_ai_task('worker-burst', null, 50, 60);
  end loop;
end $$;
select pg_temp.count_scans('after_fifties');
-- Each claim also reads the tasks already running (up to 510 here) to skip
-- projects at their cap; a plan that read the queue per project would read
-- 5,000 rows for each of the 50 projects of every claim.
select cmp_ok(pg_temp.fetched_between('after_ones', 'after_fifties'), '<', 25000::bigint,
  'ten claims of 50 tasks read tens of rows per task handed out, not the queue per project');

select * from finish();
rollback;
