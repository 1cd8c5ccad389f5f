-- Waking the runner over HTTP: the insert trigger and the pg_cron dispatch
-- job call net.http_post once per statement with the URL and key from Vault
-- or ai_queue.ops_settings, do nothing without pg_net or a URL, and never make
-- an insert fail. pg_net cannot be installed here, so a stand-in net.http_post
-- with the real signature records its calls; Vault likewise.
begin;
select plan(31);

insert into auth.users (id, email) values
  ('70000000-0000-4000-8000-000000000001', 'owner@example.test');
insert into public.projects (id, owner_id) values
  ('70100000-0000-4000-8000-000000000001', '70000000-0000-4000-8000-000000000001');

-- Inserts n due chat_reply tasks in one statement.
create function pg_temp.queue(n integer) returns void
language sql as $$
  insert into public.ai_tasks (project_id, type)
  select '70100000-0000-4000-8000-000000000001', 'chat_reply' from generate_series(1, n)
$$;

-- ================================================================ pg_net absent
select lives_ok($$select pg_temp.queue(2)$$,
  'without pg_net an insert of tasks succeeds');
select is(ai_queue.wake_runner('schedule'), null::bigint,
  'without pg_net wake_runner calls nothing and returns null');
select is(ai_queue.dispatch_due_tasks(), null::bigint,
  'without pg_net the dispatch job does nothing, though tasks are due');

-- ================================================================ pg_net present
create schema net;
create table net.calls (
  n bigserial, url text, body jsonb, params jsonb, headers jsonb, timeout_ms integer);
create function net.http_post(
  url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{"Content-Type": "application/json"}',
  timeout_milliseconds integer default 5000
) returns bigint
language sql as $$
  insert into net.calls (url, body, params, headers, timeout_ms)
  values (url, body, params, headers, timeout_milliseconds) returning n
$$;
-- Like pg_net, not callable by API roles: the trigger must not need them to be.
revoke all on schema net from public;
revoke all on function net.http_post(text, jsonb, jsonb, jsonb, integer) from public;

-- ---------------------------------------------------------------- no URL yet
select lives_ok($$select pg_temp.queue(1)$$,
  'with pg_net but no runner URL configured an insert succeeds');
select is((select count(*)::integer from net.calls), 0,
  'with no runner URL configured nothing is called');

-- ---------------------------------------------------------------- URL in settings
update ai_queue.ops_settings set
  runner_url = 'https://ref.supabase.co/functions/v1/process-ai-tasks',
  runner_key = 'settings-key-0123456789',
  dispatch_timeout_ms = 2500;

select pg_temp.queue(3);
select is((select count(*)::integer from net.calls), 1,
  'an insert statement of three tasks makes exactly one call');
select row_eq($$select url, body, timeout_ms from net.calls order by n desc limit 1$$,
  row('https://ref.supabase.co/functions/v1/process-ai-tasks'::text,
      '{"trigger": "insert", "due": 3}'::jsonb, 2500),
  'the call goes to the configured URL with the number of due tasks and the timeout');
select is((select headers from net.calls order by n desc limit 1),
  '{"Content-Type": "application/json",
    "Authorization": "Bearer settings-key-0123456789"}'::jsonb,
  'the call carries the configured key as a bearer token and nothing else');

select pg_temp.queue(1);
select pg_temp.queue(1);
select is((select count(*)::integer from net.calls), 3,
  'two more insert statements make two more calls');

insert into public.ai_tasks (project_id, type, run_at) values
  ('70100000-0000-4000-8000-000000000001', 'chat_reply', now() + interval '1 hour');
select is((select count(*)::integer from net.calls), 3,
  'an insert of tasks that are not due yet calls nothing');

-- ---------------------------------------------------------------- the browser's insert
set local role authenticated;
set local request.jwt.claims = '{"sub": "70000000-0000-4000-8000-000000000001", "role": "authenticated"}';
select lives_ok(
  $$insert into public.ai_tasks (project_id, type)
    values ('70100000-0000-4000-8000-000000000001', 'chat_reply')$$,
  'a signed-in owner''s insert succeeds though the role cannot reach pg_net or the settings');
reset role;
select is((select count(*)::integer from net.calls), 4,
  'the owner''s insert woke the runner');
select is(public.enqueue_ai_task('70100000-0000-4000-8000-000000000001') is not null, true,
  'enqueue_ai_task still returns the new task id');
select is((select body ->> 'trigger' from net.calls order by n desc limit 1), 'insert',
  'enqueue_ai_task wakes the runner through the same trigger');

-- ---------------------------------------------------------------- runner secret
update ai_queue.ops_settings set runner_secret = 'runner-secret-abcdefgh';
select pg_temp.queue(1);
select is((select headers ->> 'x-runner-secret' from net.calls order by n desc limit 1),
  'runner-secret-abcdefgh', 'a configured runner secret is sent in x-runner-secret');

-- ---------------------------------------------------------------- Vault wins
create schema vault;
create table vault.decrypted_secrets (name text primary key, decrypted_secret text);
insert into vault.decrypted_secrets values
  ('process_ai_tasks_url', 'https://vault.supabase.co/functions/v1/process-ai-tasks'),
  ('process_ai_tasks_key', 'vault-key-0123456789');
select pg_temp.queue(2);
select row_eq(
  $$select url, headers ->> 'Authorization' from net.calls order by n desc limit 1$$,
  row('https://vault.supabase.co/functions/v1/process-ai-tasks'::text,
      'Bearer vault-key-0123456789'::text),
  'URL and key in Vault take precedence over the settings table');
select is((select source from ai_queue.runner_endpoint()), 'vault',
  'runner_endpoint says the URL came from Vault');
select is((select headers ->> 'x-runner-secret' from net.calls order by n desc limit 1),
  'runner-secret-abcdefgh', 'a secret missing from Vault falls back to the settings');

-- ---------------------------------------------------------------- switched off
update ai_queue.ops_settings set dispatch_enabled = false;
select pg_temp.queue(1);
select is((select count(*)::integer from net.calls), 7,
  'with dispatch_enabled off an insert calls nothing');
update ai_queue.ops_settings set dispatch_enabled = true;

-- ---------------------------------------------------------------- dispatch job
select isnt(ai_queue.dispatch_due_tasks(), null::bigint,
  'the dispatch job calls the runner while due tasks wait');
select is((select body from net.calls order by n desc limit 1),
  (select jsonb_build_object('trigger', 'schedule', 'due', count(*))
   from public.ai_tasks where status = 'queued' and run_at <= now()),
  'the dispatch job says it is the schedule and how many tasks are due');
update public.ai_tasks set status = 'cancelled', finished_at = now() where status = 'queued';
select is(ai_queue.dispatch_due_tasks(), null::bigint,
  'with no due task the dispatch job makes no call');
select is((select count(*)::integer from net.calls), 8,
  'the idle dispatch job left no call behind');

-- ---------------------------------------------------------------- settings missing
delete from ai_queue.ops_settings;
select lives_ok($$select pg_temp.queue(1)$$, 'an insert succeeds when the settings row is gone');
alter table ai_queue.ops_settings rename to ops_settings_away;
select lives_ok($$select pg_temp.queue(1)$$,
  'and when the settings table itself is gone');
alter table ai_queue.ops_settings_away rename to ops_settings;
insert into ai_queue.ops_settings (id, runner_url, runner_key, runner_secret) values
  (true, 'https://ref.supabase.co/functions/v1/process-ai-tasks', 'settings-key-0123456789',
   'runner-secret-abcdefgh');
select is((select count(*)::integer from net.calls), 8, 'neither made a call');
update public.ai_tasks set status = 'cancelled', finished_at = now() where status = 'queued';

-- ---------------------------------------------------------------- pg_net failing
create or replace function net.http_post(
  url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{}', timeout_milliseconds integer default 5000
) returns bigint
language plpgsql as $$
begin
  raise exception 'request refused with headers %', headers;
end;
$$;
select lives_ok($$select pg_temp.queue(1)$$,
  'an insert succeeds when net.http_post raises');
select is((select count(*)::integer from public.ai_tasks where status = 'queued'), 1,
  'and the task it inserted is queued');
select throws_ok($$select ai_queue.wake_runner('schedule')$$, 'P0001',
  'net.http_post to the runner failed: request refused with headers '
  '{"Content-Type": "application/json", "Authorization": "Bearer [key]", '
  '"x-runner-secret": "[secret]"}',
  'a failed call is reported without the key or the secret');

select throws_ok($$select ai_queue.wake_runner('retry')$$, '22023',
  'reason must be insert or schedule, got ''retry''',
  'only the triggers the runner accepts can be sent');

-- ---------------------------------------------------------------- privileges
set local role authenticated;
select throws_ok($$select ai_queue.wake_runner('schedule')$$, '42501', null,
  'a signed-in user cannot call the runner directly');
reset role;

select * from finish();
rollback;
