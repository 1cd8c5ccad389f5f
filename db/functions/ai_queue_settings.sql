-- The queue's settings and model-limit bookkeeping, shared by claim, enqueue
-- and snooze. Internal: no API role may execute these.

-- The settings row. Should someone delete it, the column defaults stand in
-- (and the row is put back), so the queue never runs on nulls.
create or replace function ai_queue.settings() returns public.ai_queue_settings
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  current_settings public.ai_queue_settings;
begin
  select * into current_settings from public.ai_queue_settings s where s.id;
  if not found then
    insert into public.ai_queue_settings default values
    on conflict (id) do nothing;
    select * into current_settings from public.ai_queue_settings s where s.id;
  end if;
  return current_settings;
end;
$$;

-- Pause a model until `until` (never earlier than a pause already set): the
-- provider said it will refuse this model until then.
create or replace function ai_queue.pause_model(model text, until timestamptz)
returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  insert into public.ai_model_limits as l (model, paused_until)
  values (pause_model.model, pause_model.until)
  on conflict on constraint ai_model_limits_pkey do update set
    paused_until = greatest(l.paused_until, excluded.paused_until),
    updated_at = now()
$$;

revoke all on function
  ai_queue.settings(),
  ai_queue.pause_model(text, timestamptz)
from public, anon, authenticated, service_role;
