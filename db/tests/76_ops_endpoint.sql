-- set_runner_endpoint stores the runner's URL, key and secret where
-- runner_endpoint reads them: in Supabase Vault (a stand-in here with Vault's
-- create_secret/update_secret signatures), creating or replacing the named
-- secrets, or in ai_queue.ops_settings where there is no Vault.
begin;
select plan(14);

-- ================================================================ no Vault
select is(ai_queue.set_runner_endpoint(
    'https://ref.supabase.co/functions/v1/process-ai-tasks', 'key-one'), 'settings',
  'without Vault the endpoint goes into the settings table');
select row_eq($$select url, key, secret, source from ai_queue.runner_endpoint()$$,
  row('https://ref.supabase.co/functions/v1/process-ai-tasks'::text, 'key-one'::text,
      null::text, 'settings'::text),
  'and runner_endpoint reads it from there');

select throws_ok($$select ai_queue.set_runner_endpoint('ref.supabase.co', 'k')$$, '22023',
  'url must be an http(s) URL of the runner, got ref.supabase.co',
  'a URL without a scheme is refused');
select throws_ok($$select ai_queue.set_runner_endpoint('https://x.test', ' ')$$, '22004',
  'key must be the key the Functions gateway accepts, got null',
  'an empty key is refused');
select throws_ok($$select ai_queue.set_runner_endpoint('https://x.test', 'k', 'short')$$,
  '22023', 'secret must be at least 16 characters, got 5 characters',
  'a short runner secret is refused, as the runner refuses it');

-- ================================================================ Vault present
create schema vault;
create table vault.secrets (
  id uuid primary key default gen_random_uuid(), name text unique, description text,
  secret text not null, updated_at timestamptz default now());
create view vault.decrypted_secrets as
  select id, name, description, secret as decrypted_secret from vault.secrets;
create function vault.create_secret(
  new_secret text, new_name text default null, new_description text default '',
  new_key_id uuid default null
) returns uuid
language sql as $$
  insert into vault.secrets (name, description, secret)
  values (new_name, new_description, new_secret) returning id
$$;
create function vault.update_secret(
  secret_id uuid, new_secret text default null, new_name text default null,
  new_description text default null, new_key_id uuid default null
) returns void
language sql as $$
  update vault.secrets set secret = coalesce(new_secret, secret), updated_at = now()
  where id = secret_id
$$;

select is(ai_queue.set_runner_endpoint(
    'https://ref.supabase.co/functions/v1/process-ai-tasks', 'vault-key-1',
    'runner-secret-0123456789'), 'vault',
  'with Vault the endpoint goes into Vault');
select set_eq($$select name, decrypted_secret from vault.decrypted_secrets$$,
  $$values ('process_ai_tasks_url', 'https://ref.supabase.co/functions/v1/process-ai-tasks'),
           ('process_ai_tasks_key', 'vault-key-1'),
           ('process_ai_tasks_runner_secret', 'runner-secret-0123456789')$$,
  'three secrets under the names the settings give');
select row_eq($$select runner_url, runner_key, runner_secret from ai_queue.ops_settings$$,
  row(null::text, null::text, null::text),
  'the fallback copies in the settings table are cleared');
select row_eq($$select key, secret, source from ai_queue.runner_endpoint()$$,
  row('vault-key-1'::text, 'runner-secret-0123456789'::text, 'vault'::text),
  'runner_endpoint reads all three from Vault');

select ai_queue.set_runner_endpoint(
  'https://other.supabase.co/functions/v1/process-ai-tasks', 'vault-key-2');
select is((select count(*)::integer from vault.secrets), 3,
  'setting it again replaces the secrets instead of adding more');
select row_eq($$select url, key, secret from ai_queue.runner_endpoint()$$,
  row('https://other.supabase.co/functions/v1/process-ai-tasks'::text, 'vault-key-2'::text,
      'runner-secret-0123456789'::text),
  'URL and key are replaced; a secret not given is left as it was');

update ai_queue.ops_settings set vault_url_secret = 'my_runner_url';
select ai_queue.set_runner_endpoint('https://renamed.test/fn', 'vault-key-3');
select is((select decrypted_secret from vault.decrypted_secrets where name = 'my_runner_url'),
  'https://renamed.test/fn', 'the secret names come from the settings');

-- ================================================================ privileges
set local role service_role;
select throws_ok($$select ai_queue.set_runner_endpoint('https://x.test', 'k')$$, '42501', null,
  'not even the service role may redirect the runner calls');
reset role;
set local role authenticated;
select throws_ok($$select * from ai_queue.runner_endpoint()$$, '42501', null,
  'a signed-in user cannot read the endpoint or its key');
reset role;

select * from finish();
rollback;
