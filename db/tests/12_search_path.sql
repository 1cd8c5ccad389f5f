-- SECURITY DEFINER functions run with their owner's rights, so nothing the
-- caller controls may change which objects they use: not the caller's
-- search_path, and not the caller's temporary schema, which PostgreSQL
-- searches first for table and type names unless search_path lists pg_temp
-- explicitly. Each trap below is shown to be armed for the caller first.
begin;
select plan(15);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id, max_running_tasks) values
  ('a1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 1000);

-- ================================================================ temporary types
-- While a type is shadowed nothing else may run in this session, pgTAP
-- included (its functions do not pin search_path), so each step only writes
-- what happened into `outcome`; the assertions come once the trap is gone.
-- The trap's function counts runs with the owner's rights in a sequence,
-- which a rolled-back error cannot undo.
create temp table outcome (step pg_catalog.text primary key, value pg_catalog.text);
create temp sequence owner_runs;
grant all on pg_temp.outcome, pg_temp.owner_runs to authenticated, service_role;

-- A signed-in user shadows `text` with a temporary type and a cast to it.
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "a0000000-0000-4000-8000-000000000001", "role": "authenticated"}';
create temp table text (v pg_catalog.text);
create function pg_temp.to_shadow(pg_catalog.text) returns pg_temp.text
language plpgsql as $$
begin
  if current_user <> 'authenticated' then
    perform pg_catalog.nextval('pg_temp.owner_runs');
  end if;
  return row($1)::pg_temp.text;
end;
$$;
create cast (pg_catalog.text as pg_temp.text)
  with function pg_temp.to_shadow(pg_catalog.text) as assignment;
do $$
begin
  insert into pg_temp.outcome values ('caller text', ('x'::pg_catalog.text)::text);
  begin
    perform public.enqueue_ai_task('a1000000-0000-4000-8000-000000000001', message => 'Hi');
    insert into pg_temp.outcome values ('enqueue', 'ok');
  exception when others then
    insert into pg_temp.outcome values ('enqueue', sqlerrm);
  end;
  begin
    perform public.cancel_ai_task(
      (select t.id from public.ai_tasks t order by t.created_at limit 1));
    insert into pg_temp.outcome values ('cancel', 'ok');
  exception when others then
    insert into pg_temp.outcome values ('cancel', sqlerrm);
  end;
end;
$$;
drop cast (pg_catalog.text as pg_temp.text);
drop function pg_temp.to_shadow(pg_catalog.text);
drop table pg_temp.text;
reset role;
reset request.jwt.claims;

-- The service shadows `jsonb`, which claim's history uses.
insert into public.ai_tasks (project_id, type)
values ('a1000000-0000-4000-8000-000000000001', 'chat_reply');
set local role service_role;
create temp table jsonb (v pg_catalog.text);
create function pg_temp.to_shadow(pg_catalog.text) returns pg_temp.jsonb
language plpgsql as $$
begin
  if current_user <> 'service_role' then
    perform pg_catalog.nextval('pg_temp.owner_runs');
  end if;
  return row($1)::pg_temp.jsonb;
end;
$$;
create cast (pg_catalog.text as pg_temp.jsonb)
  with function pg_temp.to_shadow(pg_catalog.text) as assignment;
do $$
begin
  insert into pg_temp.outcome
  select 'claim', pg_catalog.jsonb_typeof(c.history)
  from public.claim_ai_task('worker-1', 'a1000000-0000-4000-8000-000000000001') c;
exception when others then
  insert into pg_temp.outcome values ('claim', sqlerrm);
end;
$$;
drop cast (pg_catalog.text as pg_temp.jsonb);
drop function pg_temp.to_shadow(pg_catalog.text);
drop table pg_temp.jsonb;
reset role;

select is((select value from outcome where step = 'caller text'), '(x)',
  'in the caller''s own queries `text` meant the temporary type: the trap was armed');
select is((select value from outcome where step = 'enqueue'), 'ok',
  'enqueue worked unchanged beside a temporary type named text');
select is((select value from outcome where step = 'cancel'), 'ok',
  'cancel worked unchanged beside it too');
select is((select value from outcome where step = 'claim'), 'array',
  'claim handed out a real JSON history beside a temporary type named jsonb');
select is((select case when is_called then last_value else 0 end from owner_runs), 0::bigint,
  'no caller''s cast ever ran with the function owner''s rights');

-- ================================================================ the caller's search_path
-- A schema put before pg_catalog and public, with its own now(), ai_tasks and
-- chat_messages.
create schema evil;
create table evil.calls (what text);
create function evil.now() returns timestamptz
language plpgsql as $$
begin
  insert into evil.calls values ('now');
  return '2000-01-01 00:00:00+00';
end;
$$;
create table evil.ai_tasks (like public.ai_tasks);
create table evil.chat_messages (like public.chat_messages);
create table evil.build_logs (like public.build_logs);
grant usage on schema evil to authenticated, service_role;
grant all on all tables in schema evil to authenticated, service_role;
grant execute on function evil.now() to authenticated, service_role;
insert into evil.ai_tasks (id, project_id, type, status, run_at, created_at, updated_at,
                           payload, errors, attempts, max_attempts, priority, snoozes)
select gen_random_uuid(), 'a1000000-0000-4000-8000-000000000001', 'chat_reply', 'queued',
       now(), now(), now(), '{}', '[]', 0, 3, 100, 0;

set local search_path = evil, pg_catalog, public;
select is(now(), '2000-01-01 00:00:00+00'::timestamptz,
  'for the caller, now() is the planted one');
select is((select count(*)::int from ai_tasks), 1,
  'for the caller, ai_tasks is the planted table');
delete from evil.calls;

insert into public.ai_tasks (id, project_id, type)
values ('c0000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
        'chat_reply');
set local role service_role;
select is(
  (select id from public.claim_ai_task('worker-1', 'a1000000-0000-4000-8000-000000000001')),
  'c0000000-0000-4000-8000-000000000001'::uuid,
  'claim takes the task from public.ai_tasks, not the planted table');
select is(
  (select locked_until from public.ai_tasks where id = 'c0000000-0000-4000-8000-000000000001'),
  pg_catalog.now() + interval '300 seconds',
  'the lease is measured with the real now()');
select isnt(public.complete_ai_task('c0000000-0000-4000-8000-000000000001', 1, 'answer'), null,
  'complete works with the planted search_path');
reset role;
select is((select count(*)::int from public.chat_messages
           where task_id = 'c0000000-0000-4000-8000-000000000001'),
  1, 'the answer went to public.chat_messages');
select is(
  (select count(*)::int from evil.chat_messages) + (select count(*)::int from evil.build_logs)
    + (select count(*)::int from evil.ai_tasks where status <> 'queued'),
  0, 'the planted tables were neither written nor claimed from');
select is((select count(*)::int from evil.calls), 0, 'the planted now() was never called');
reset search_path;

-- ================================================================ the catalog
create temp view own_functions as
  select p.oid, n.nspname || '.' || p.proname as name, p.prosecdef,
         (select c from unnest(p.proconfig) c where c like 'search_path=%') as search_path
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  where n.nspname in ('public', 'ai_queue')
    and not exists (select 1 from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                      and d.deptype = 'e');
select is(
  (select array_agg(name order by name) from own_functions
   where prosecdef and search_path is null),
  null, 'every SECURITY DEFINER function in public and ai_queue pins its search_path');
select is(
  (select array_agg(name || ' (' || coalesce(search_path, 'unset') || ')' order by name)
   from own_functions
   where search_path is distinct from 'search_path=pg_catalog, pg_temp'),
  null, 'every function of the queue searches pg_catalog, then pg_temp last, and nothing else');

select * from finish();
rollback;
