-- Waking the runner over HTTP: the Database Webhook pattern without the
-- dashboard. Where pg_net exists, an insert of due tasks and the pg_cron
-- dispatch job POST to the runner's Edge Function (process-ai-tasks), whose
-- URL and key come from Supabase Vault or, failing that, ai_queue.ops_settings.
-- Without pg_net, or with no URL configured, all of this quietly does nothing
-- and LISTEN/NOTIFY workers (ai_tasks_notify.sql) and polling carry the queue.

-- Where the runner is: each value from Vault when the vault schema holds a
-- secret of the configured name, else from ai_queue.ops_settings. `source`
-- says where the URL came from ('vault', 'settings') or is null when none is
-- set, which switches HTTP dispatch off.
create or replace function ai_queue.runner_endpoint(
  out url text, out key text, out secret text, out source text
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  settings ai_queue.ops_settings;
begin
  select * into settings from ai_queue.ops_settings s where s.id;
  if not found then
    return;
  end if;

  -- Dynamic, because vault.decrypted_secrets does not exist on plain PostgreSQL.
  if to_regclass('vault.decrypted_secrets') is not null then
    execute 'select max(d.decrypted_secret) filter (where d.name = $1),
                    max(d.decrypted_secret) filter (where d.name = $2),
                    max(d.decrypted_secret) filter (where d.name = $3)
             from vault.decrypted_secrets d where d.name in ($1, $2, $3)'
      into url, key, secret
      using settings.vault_url_secret, settings.vault_key_secret,
            settings.vault_runner_secret;
    url := nullif(btrim(url), '');
    if url is not null then
      source := 'vault';
    end if;
  end if;

  if url is null and settings.runner_url is not null then
    url := settings.runner_url;
    source := 'settings';
  end if;
  key := coalesce(nullif(key, ''), settings.runner_key);
  secret := coalesce(nullif(secret, ''), settings.runner_secret);
end;
$$;

-- POST {"trigger": reason, "due": due_tasks} to the runner, the wake-up body
-- runner/http.ts accepts: reason 'insert' (new tasks) or 'schedule' (the
-- dispatch job, a bulk retry). Returns pg_net's request id, or null when
-- there is nothing to call (no pg_net, dispatch switched off, no URL). pg_net
-- queues the request and sends it after commit, so the runner never looks
-- for a task before it is visible.
create or replace function ai_queue.wake_runner(reason text, due_tasks integer default null)
returns bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  endpoint record;
  settings ai_queue.ops_settings;
  headers jsonb := jsonb_build_object('Content-Type', 'application/json');
  request_id bigint;
begin
  if reason is null or reason not in ('insert', 'schedule') then
    perform ai_queue.invalid_argument('reason', 'must be insert or schedule',
      quote_literal(reason));
  end if;
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return null;
  end if;
  select * into settings from ai_queue.ops_settings s where s.id;
  if not found or not settings.dispatch_enabled then
    return null;
  end if;
  select * into endpoint from ai_queue.runner_endpoint();
  if endpoint.url is null then
    return null;
  end if;

  -- The key passes the Functions gateway (a JWT); the runner secret, when
  -- set, is what the runner itself checks (RUNNER_HTTP_SECRET).
  if endpoint.key is not null then
    headers := headers || jsonb_build_object('Authorization', 'Bearer ' || endpoint.key);
  end if;
  if endpoint.secret is not null then
    headers := headers || jsonb_build_object('x-runner-secret', endpoint.secret);
  end if;

  begin
    execute 'select net.http_post(url => $1, body => $2, headers => $3,
                                  timeout_milliseconds => $4)'
      into request_id
      using endpoint.url, jsonb_build_object('trigger', reason, 'due', due_tasks),
            headers, settings.dispatch_timeout_ms;
  exception when others then
    -- Re-raised without the key or secret, should the error quote a header.
    raise exception 'net.http_post to the runner failed: %',
      replace(replace(sqlerrm, coalesce(endpoint.key, chr(1)), '[key]'),
              coalesce(endpoint.secret, chr(1)), '[secret]')
      using errcode = sqlstate;
  end;
  return request_id;
end;
$$;

-- The pg_cron dispatch job: a cheap look at the claim index first, and an
-- HTTP call only when due tasks are waiting. Counting stops at 1000: the
-- runner needs to know there is work, not exactly how much.
create or replace function ai_queue.dispatch_due_tasks() returns bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  due integer;
begin
  select count(*) into due from (
    select 1 from public.ai_tasks t
    where t.status = 'queued' and t.run_at <= now()
    limit 1000
  ) d;
  if due = 0 then
    return null;
  end if;
  return ai_queue.wake_runner('schedule', due);
end;
$$;

-- After an insert statement that queued due tasks: one call per statement,
-- however many rows it inserted. It must never cost the browser its insert,
-- so every error is turned into a warning in the server log.
-- Known gap: many users inserting one task each at the same moment cause as
-- many calls; a last-call time claimed with SKIP LOCKED would debounce them.
create or replace function ai_queue.wake_runner_after_insert() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  due integer;
begin
  -- The common case on plain PostgreSQL: one catalog lookup and out.
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return null;
  end if;
  begin
    select count(*) into due from inserted_tasks t
    where t.status = 'queued' and t.run_at <= now();
    if due > 0 then
      perform ai_queue.wake_runner('insert', due);
    end if;
  exception when others then
    raise warning 'ai_queue: tasks were queued but the runner could not be woken: % (%)',
      sqlerrm, sqlstate
      using hint = 'Check pg_net and the runner URL in Vault or ai_queue.ops_settings; '
                   'the pg_cron dispatch job and workers still pick the tasks up.';
  end;
  return null;
end;
$$;

create or replace trigger ai_tasks_wake_runner
  after insert on public.ai_tasks
  referencing new table as inserted_tasks
  for each statement execute function ai_queue.wake_runner_after_insert();

revoke all on function
  ai_queue.runner_endpoint(),
  ai_queue.wake_runner(text, integer),
  ai_queue.dispatch_due_tasks(),
  ai_queue.wake_runner_after_insert()
from public, anon, authenticated;

-- set_runner_endpoint: where the dispatch calls go, stored where
-- runner_endpoint reads it. With Supabase Vault the URL, key and secret
-- become (or replace) the Vault secrets named in ai_queue.ops_settings;
-- without Vault they go into ai_queue.ops_settings itself. Returns 'vault' or
-- 'settings'. For the operator (postgres), never API roles. The values pass
-- through SQL: run it where statements are not logged in full.
create or replace function ai_queue.set_runner_endpoint(
  url text, key text, secret text default null
) returns text
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  settings ai_queue.ops_settings;
  item record;
  existing uuid;
begin
  if url is null or url !~ '^https?://[^\s/]+' then
    perform ai_queue.invalid_argument('url', 'must be an http(s) URL of the runner',
      case when url is null then null else left(url, 60) end,
      'For example https://<project-ref>.supabase.co/functions/v1/process-ai-tasks');
  end if;
  if key is null or length(btrim(key)) = 0 then
    perform ai_queue.invalid_argument('key', 'must be the key the Functions gateway accepts',
      null, 'The service role key (a JWT) passes both the gateway and the runner.');
  end if;
  if secret is not null and length(secret) < 16 then
    perform ai_queue.invalid_argument('secret', 'must be at least 16 characters',
      length(secret) || ' characters');
  end if;

  select * into settings from ai_queue.ops_settings s where s.id for update;
  if not found then
    insert into ai_queue.ops_settings (id) values (true) returning * into settings;
  end if;

  if to_regprocedure('vault.create_secret(text,text,text,uuid)') is null then
    update ai_queue.ops_settings s set
      runner_url = set_runner_endpoint.url,
      runner_key = set_runner_endpoint.key,
      runner_secret = set_runner_endpoint.secret,
      updated_at = now()
    where s.id;
    return 'settings';
  end if;

  -- Dynamic, because the vault schema exists only on Supabase.
  for item in
    select * from (values (settings.vault_url_secret, url, 'process-ai-tasks URL'),
                          (settings.vault_key_secret, key, 'process-ai-tasks key'),
                          (settings.vault_runner_secret, secret, 'RUNNER_HTTP_SECRET'))
      v(name, value, description)
    where v.value is not null
  loop
    execute 'select s.id from vault.secrets s where s.name = $1' into existing using item.name;
    if existing is null then
      execute 'select vault.create_secret($1, $2, $3)'
        using item.value, item.name, item.description;
    else
      execute 'select vault.update_secret($1, $2)' using existing, item.value;
    end if;
  end loop;
  -- Vault now says where the runner is; stale fallbacks would only confuse.
  update ai_queue.ops_settings s set
    runner_url = null, runner_key = null, runner_secret = null, updated_at = now()
  where s.id;
  return 'vault';
end;
$$;

revoke all on function ai_queue.set_runner_endpoint(text, text, text)
  from public, anon, authenticated, service_role;
