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

-- Count a completed task's tokens in its model's current minute, for
-- tokens_per_minute. Tokens are known only once the model has answered, so
-- the limit stops further claims of the model for the rest of the minute
-- once the reported tokens reach it; it cannot stop the answers in flight.
-- The model charged is the one the claim counted (the task's model before
-- completion, or the default), not the name the provider answered with.
create or replace function ai_queue.count_model_tokens() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  this_window timestamptz := date_trunc('minute', now());
  tokens bigint := 0;
  field text;
begin
  -- The runner reports prompt_tokens and completion_tokens; total_tokens wins
  -- when given. Anything that is not a number counts as nothing.
  if jsonb_typeof(new.result -> 'total_tokens') = 'number' then
    tokens := floor((new.result ->> 'total_tokens')::numeric);
  else
    foreach field in array array['prompt_tokens', 'completion_tokens'] loop
      if jsonb_typeof(new.result -> field) = 'number' then
        tokens := tokens + floor((new.result ->> field)::numeric);
      end if;
    end loop;
  end if;
  if tokens <= 0 then
    return null;
  end if;

  update public.ai_model_limits l set
    window_tokens = case when l.window_start = this_window then l.window_tokens else 0 end
                    + tokens,
    window_requests = case when l.window_start = this_window then l.window_requests else 0 end,
    window_start = this_window,
    updated_at = now()
  where l.model = coalesce(old.model, (ai_queue.settings()).default_model)
    and l.tokens_per_minute is not null;
  return null;
end;
$$;

create or replace trigger ai_tasks_count_model_tokens
  after update of status on public.ai_tasks
  for each row when (new.status = 'completed' and old.status = 'running')
  execute function ai_queue.count_model_tokens();

revoke all on function
  ai_queue.settings(),
  ai_queue.pause_model(text, timestamptz),
  ai_queue.count_model_tokens()
from public, anon, authenticated, service_role;
