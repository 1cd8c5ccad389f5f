-- Fairness between projects: running caps and round-robin batches.
-- Concurrent claims keeping the caps exact are proven in db/fairness_test.ts;
-- one session cannot interleave with itself.
begin;
select plan(14);

insert into auth.users (id, email) values
  ('f0000000-0000-4000-8000-000000000001', 'fair@example.test');
insert into public.projects (owner_id, name)
select 'f0000000-0000-4000-8000-000000000001', n
from unnest(array['fair big', 'fair a', 'fair b', 'fair c', 'fair d', 'fair e', 'fair f']) n;
update public.ai_queue_settings set default_max_running_tasks = 3;

-- Tasks numbered 1..how_many in payload.n, one second apart from first_at.
create function pg_temp.add_tasks(project text, how_many integer, first_at timestamptz,
                                  priority integer default 0, first_n integer default 1)
returns void language sql as $$
  insert into public.ai_tasks (project_id, type, payload, priority, run_at, created_at)
  select p.id, 'chat_reply', jsonb_build_object('n', i), priority,
         first_at + (i - first_n) * interval '1 second',
         first_at + (i - first_n) * interval '1 second'
  from public.projects p, generate_series(first_n, first_n + how_many - 1) i
  where p.name = project
$$;

-- What a claim hands out, in its order, as 'project#n' ('fair ' left off).
-- Every task handed out is also recorded in handed_out.
create temp table handed_out (id uuid) on commit drop;
create function pg_temp.claim(batch integer, only_project text default null)
returns text[] language sql as $$
  with c as (
    select *
    from public.claim_ai_task('worker-fair',
           (select id from public.projects where name = only_project), batch)
         with ordinality as c (id, project_id, user_id, type, payload, model, priority,
                               attempt, max_attempts, created_at, lease_expires_at, history,
                               ord)
  ), recorded as (
    insert into handed_out select c.id from c
  )
  select coalesce(array_agg(substr(p.name, 6) || '#' || (c.payload ->> 'n') order by c.ord),
                  '{}')
  from c
  join public.projects p on p.id = c.project_id
$$;

create function pg_temp.task(project text, n integer) returns uuid language sql as $$
  select t.id from public.ai_tasks t join public.projects p on p.id = t.project_id
  where p.name = project and t.payload ->> 'n' = n::text
$$;

-- One project with an old backlog of 20, three with 3 newer tasks each.
select pg_temp.add_tasks('fair big', 20, now() - interval '1 hour');
select pg_temp.add_tasks('fair a', 3, now() - interval '10 minutes');
select pg_temp.add_tasks('fair b', 3, now() - interval '9 minutes');
select pg_temp.add_tasks('fair c', 3, now() - interval '8 minutes');

-- ---------------------------------------------------------------- round-robin
select is(pg_temp.claim(2), array['big#1', 'a#1'],
  'a batch of 2 takes the heads of the two projects waiting longest, '
  'not the two oldest tasks of one project');
select is(pg_temp.claim(8),
  array['b#1', 'c#1', 'big#2', 'a#2', 'b#2', 'c#2', 'big#3', 'a#3'],
  'a batch deals every project''s first task, then every project''s second, '
  'counting a running task as a turn already dealt');

-- ---------------------------------------------------------------- caps
select is(pg_temp.claim(10), array['b#3', 'c#3'],
  'projects at their cap are skipped: the backlog''s 17 queued tasks wait');
select is(pg_temp.claim(1), '{}'::text[],
  'with every project at its cap or empty, nothing is claimed though tasks are queued');
select is(pg_temp.claim(10, 'fair big'), '{}'::text[],
  'a claim filtered on a project at its cap takes nothing');

select ok(public.complete_ai_task(pg_temp.task('fair big', 1), 1, 'done') is not null,
  'one of the backlog''s running tasks completes');
select is(pg_temp.claim(5), array['big#4'],
  'a finished task frees exactly one slot for its project');

update public.projects set max_running_tasks = 5 where name = 'fair big';
select is(pg_temp.claim(10), array['big#5', 'big#6'],
  'projects.max_running_tasks overrides the default cap');

update public.projects set max_running_tasks = null where name = 'fair big';
update public.ai_queue_settings set default_max_running_tasks = 10;
select is(pg_temp.claim(3), array['big#7', 'big#8', 'big#9'],
  'a project without its own cap follows ai_queue_settings.default_max_running_tasks');

-- ---------------------------------------------------------------- priority
select pg_temp.add_tasks('fair big', 1, now(), priority => 10, first_n => 99);
select is(pg_temp.claim(1), array['big#99'],
  'within a project a higher priority goes first, however new the task');

select pg_temp.add_tasks('fair d', 2, now() - interval '1 minute', priority => 5);
select pg_temp.add_tasks('fair a', 1, now() - interval '2 hours', first_n => 4);
update public.projects set max_running_tasks = 20 where name = 'fair big';
select is(pg_temp.claim(4), array['d#1', 'd#2', 'a#4', 'big#10'],
  'a project with nothing in flight is served before busier ones with older tasks');

select pg_temp.add_tasks('fair e', 1, now() - interval '3 hours');
select pg_temp.add_tasks('fair f', 1, now() - interval '1 minute', priority => 5);
select is(pg_temp.claim(2), array['f#1', 'e#1'],
  'within a turn the projects'' heads go in priority order, then by age');

-- ---------------------------------------------------------------- invariants
select is(
  (select count(*)::integer from (
     select t.project_id, count(*) as running
     from public.ai_tasks t join public.projects p on p.id = t.project_id
     where t.status = 'running'
     group by t.project_id, p.max_running_tasks
     having count(*) > coalesce(p.max_running_tasks,
                                (select default_max_running_tasks
                                 from public.ai_queue_settings))) over_cap),
  0, 'no project runs more tasks than its cap');
select is(
  (select array[count(*), count(distinct id)]::integer[] from handed_out),
  (select array[count(*) filter (where attempts > 0),
                count(*) filter (where attempts = 1)]::integer[]
   from public.ai_tasks),
  'every task handed out was claimed exactly once, and no other task was');

select * from finish();
rollback;
