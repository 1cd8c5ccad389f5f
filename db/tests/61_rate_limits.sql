-- Per-model limits: requests per minute, tokens per minute, pauses.
begin;
select plan(16);

insert into auth.users (id, email) values
  ('f0000000-0000-4000-8000-000000000061', 'limits@example.test');
-- A generous running cap, so only the model limits decide.
insert into public.projects (id, owner_id, name, max_running_tasks) values
  ('f1000000-0000-4000-8000-000000000061', 'f0000000-0000-4000-8000-000000000061',
   'limits', 1000);

create function pg_temp.add_tasks(model text, how_many integer) returns void
language sql as $$
  insert into public.ai_tasks (project_id, type, model, run_at, created_at)
  select 'f1000000-0000-4000-8000-000000000061', 'chat_reply', model,
         now() - interval '1 hour' + i * interval '1 second',
         now() - interval '1 hour' + i * interval '1 second'
  from generate_series(1, how_many) i
$$;

-- How many tasks a claim of up to 10 hands out, per model ('-' for none).
create function pg_temp.claim_models() returns text language sql as $$
  select coalesce(string_agg(m.model || ' x' || m.n, ', ' order by m.model), 'nothing')
  from (select coalesce(c.model, '-') as model, count(*) as n
        from public.claim_ai_task('worker-limits', batch_size => 10) c
        group by 1) m
$$;

insert into public.ai_model_limits (model, requests_per_minute) values ('m/limited', 3);
select pg_temp.add_tasks('m/limited', 5);

-- ---------------------------------------------------------------- requests per minute
select is(pg_temp.claim_models(), 'm/limited x3',
  'a batch takes no more of a model than its requests_per_minute leaves');
select row_eq(
  $$select window_start, window_requests from public.ai_model_limits where model = 'm/limited'$$,
  row(date_trunc('minute', now()), 3),
  'the claim counts its requests in the model''s current minute');
select is(pg_temp.claim_models(), 'nothing',
  'a model at its limit is not handed out for the rest of the minute');

select pg_temp.add_tasks('m/free', 2);
select is(pg_temp.claim_models(), 'm/free x2',
  'a model without a limit row is not limited, while the limited one waits');

update public.ai_model_limits set window_start = window_start - interval '1 minute'
where model = 'm/limited';
select is(pg_temp.claim_models(), 'm/limited x2',
  'a new minute starts a fresh window for the model');
select is(
  (select window_requests from public.ai_model_limits where model = 'm/limited'), 2,
  'the fresh window counts only this minute''s requests');

-- ---------------------------------------------------------------- the default model
insert into public.ai_model_limits (model, requests_per_minute)
values ('openai/gpt-4o-mini', 1);
select pg_temp.add_tasks(null, 3);
select is(pg_temp.claim_models(), '- x1',
  'a task without a model is limited as the default model');
update public.ai_queue_settings set default_model = 'm/other-default';
select is(pg_temp.claim_models(), '- x2',
  'the default model''s name comes from ai_queue_settings.default_model');

-- ---------------------------------------------------------------- pauses
insert into public.ai_model_limits (model, paused_until)
values ('m/paused', now() + interval '10 seconds');
select pg_temp.add_tasks('m/paused', 1);
select is(pg_temp.claim_models(), 'nothing',
  'a paused model is not handed out before paused_until');
update public.ai_model_limits set paused_until = now() - interval '1 second'
where model = 'm/paused';
select is(pg_temp.claim_models(), 'm/paused x1',
  'a paused model is handed out again once paused_until has passed');
select is(
  (select window_requests from public.ai_model_limits where model = 'm/paused'), 0,
  'a model with no request or token limit keeps no counter (no row lock per claim)');

insert into public.ai_model_limits (model, requests_per_minute) values ('m/off', 0);
select pg_temp.add_tasks('m/off', 1);
select is(pg_temp.claim_models(), 'nothing',
  'requests_per_minute 0 stops a model altogether');

-- ---------------------------------------------------------------- tokens per minute
delete from public.ai_tasks where model = 'm/off';
insert into public.ai_model_limits (model, tokens_per_minute) values ('m/tokens', 100);
select pg_temp.add_tasks('m/tokens', 3);
update public.ai_tasks set run_at = now() + interval '1 hour'
where model = 'm/tokens' and id <> (select id from public.ai_tasks where model = 'm/tokens'
                                    order by created_at limit 1);
select is(pg_temp.claim_models(), 'm/tokens x1',
  'a model under its tokens_per_minute is handed out');
select ok(
  (select public.complete_ai_task(t.id, t.attempts, 'answer',
                                  '{"prompt_tokens": 80, "completion_tokens": 30}')
   from public.ai_tasks t where t.model = 'm/tokens' and t.status = 'running') is not null,
  'the task completes, reporting 110 tokens as the runner does');
update public.ai_tasks set run_at = now() where model = 'm/tokens' and status = 'queued';
select is(
  (select window_tokens from public.ai_model_limits where model = 'm/tokens'), 110::bigint,
  'a completion''s prompt and completion tokens count in its model''s minute');
select is(pg_temp.claim_models(), 'nothing',
  'a model whose reported tokens reached tokens_per_minute waits for the next minute');

select * from finish();
rollback;
