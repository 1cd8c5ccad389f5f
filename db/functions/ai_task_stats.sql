-- ai_task_stats: the queue at a glance, for one project or all of them.
-- Service role only. Returns one JSON object:
--   counts       live tasks (queued, due, waiting_retry, running, lease_expired)
--                and tasks finished in the last usage_days (completed, failed,
--                cancelled); oldest_due_seconds: how long the longest-waiting
--                due task has been claimable.
--   windows      for the last 5 and 60 minutes: completed, failed, cancelled,
--                throughput_per_minute, failure_rate (failed / (completed +
--                failed)), run_p50_seconds and run_p95_seconds (finished_at -
--                started_at of completed tasks, i.e. of their last attempt).
--   usage        per project and UTC day over usage_days: completed, failed,
--                prompt_tokens, completion_tokens, cost (USD) and
--                model_latency_p50_ms, from the figures the runner records in
--                result.
--   dispatch     whether pg_net and a runner URL are there (never the URL or
--                key), and the pg_cron jobs with their last run.
--   realtime     the queue's tables in the supabase_realtime publication, or
--                null where that publication does not exist.
-- Every part reads a partial index or a finished_at range, never the whole
-- task history.
create or replace function public.ai_task_stats(
  project_id uuid default null,
  usage_days integer default 7
) returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  only_project uuid := project_id;
  usage_since timestamptz;
  live jsonb;
  finished jsonb;
  windows jsonb;
  usage jsonb;
  dispatch jsonb;
  jobs jsonb;
  realtime jsonb;
begin
  if usage_days is null or usage_days not between 1 and 366 then
    perform ai_queue.invalid_argument('usage_days', 'must be between 1 and 366',
      usage_days::text);
  end if;
  usage_since := now() - make_interval(days => usage_days);

  -- Two scans, one per partial index (claim and lease).
  select jsonb_build_object(
           'queued', q.queued, 'due', q.due, 'waiting_retry', q.queued - q.due,
           'running', r.running, 'lease_expired', r.lease_expired,
           'oldest_due_seconds', round(extract(epoch from now() - q.oldest_due)::numeric, 3))
  into live
  from (
    select count(*) as queued,
           count(*) filter (where t.run_at <= now()) as due,
           min(t.run_at) filter (where t.run_at <= now()) as oldest_due
    from public.ai_tasks t
    where t.status = 'queued' and (only_project is null or t.project_id = only_project)
  ) q, (
    select count(*) as running,
           count(*) filter (where t.locked_until < now()) as lease_expired
    from public.ai_tasks t
    where t.status = 'running' and (only_project is null or t.project_id = only_project)
  ) r;

  select jsonb_build_object(
           'completed', count(*) filter (where t.status = 'completed'),
           'failed', count(*) filter (where t.status = 'failed'),
           'cancelled', count(*) filter (where t.status = 'cancelled'))
  into finished
  from public.ai_tasks t
  where t.finished_at >= usage_since
    and (only_project is null or t.project_id = only_project);

  select jsonb_agg(jsonb_build_object(
           'minutes', w.minutes,
           'completed', w.completed,
           'failed', w.failed,
           'cancelled', w.cancelled,
           'throughput_per_minute', round(w.completed::numeric / w.minutes, 3),
           'failure_rate', case when w.completed + w.failed > 0
                                then round(w.failed::numeric / (w.completed + w.failed), 4) end,
           'run_p50_seconds', round(w.p50::numeric, 3),
           'run_p95_seconds', round(w.p95::numeric, 3))
         order by w.minutes)
  into windows
  from (
    select m.minutes,
           count(t.id) filter (where t.status = 'completed') as completed,
           count(t.id) filter (where t.status = 'failed') as failed,
           count(t.id) filter (where t.status = 'cancelled') as cancelled,
           percentile_cont(0.5) within group (
             order by extract(epoch from t.finished_at - t.started_at))
             filter (where t.status = 'completed') as p50,
           percentile_cont(0.95) within group (
             order by extract(epoch from t.finished_at - t.started_at))
             filter (where t.status = 'completed') as p95
    from unnest(array[5, 60]) as m(minutes)
    left join public.ai_tasks t
      on t.finished_at >= now() - make_interval(mins => m.minutes)
     and (only_project is null or t.project_id = only_project)
    group by m.minutes
  ) w;

  select coalesce(jsonb_agg(jsonb_build_object(
           'project_id', u.project_id,
           'day', u.day,
           'completed', u.completed,
           'failed', u.failed,
           'prompt_tokens', u.prompt_tokens,
           'completion_tokens', u.completion_tokens,
           'cost', u.cost,
           'model_latency_p50_ms', u.latency_p50_ms)
         order by u.day desc, u.project_id), '[]')
  into usage
  from (
    select t.project_id,
           (t.finished_at at time zone 'UTC')::date as day,
           count(*) filter (where t.status = 'completed') as completed,
           count(*) filter (where t.status = 'failed') as failed,
           coalesce(sum(f.prompt_tokens), 0) as prompt_tokens,
           coalesce(sum(f.completion_tokens), 0) as completion_tokens,
           coalesce(sum(f.cost), 0) as cost,
           round(percentile_cont(0.5) within group (order by f.latency_ms)::numeric)
             as latency_p50_ms
    from public.ai_tasks t
    -- The figures the runner records in result: result.<field>, as
    -- runner/handlers.ts writes it, else result.usage.<field>, as the
    -- OpenAI/OpenRouter usage object names it. Anything but a JSON number
    -- counts as missing, so one odd result cannot break the stats. Written
    -- out rather than through a helper: a helper with its search_path pinned
    -- is not inlined, and its calls took most of the time: 2.4 s against 0.3-0.7 s
    -- for 50 projects and 52000 tasks a week (scripts/bench-ops.sh).
    cross join lateral (
      select
        coalesce(
          case jsonb_typeof(t.result -> 'prompt_tokens')
            when 'number' then (t.result ->> 'prompt_tokens')::numeric end,
          case jsonb_typeof(t.result #> '{usage,prompt_tokens}')
            when 'number' then (t.result #>> '{usage,prompt_tokens}')::numeric end)
          as prompt_tokens,
        coalesce(
          case jsonb_typeof(t.result -> 'completion_tokens')
            when 'number' then (t.result ->> 'completion_tokens')::numeric end,
          case jsonb_typeof(t.result #> '{usage,completion_tokens}')
            when 'number' then (t.result #>> '{usage,completion_tokens}')::numeric end)
          as completion_tokens,
        coalesce(
          case jsonb_typeof(t.result -> 'cost')
            when 'number' then (t.result ->> 'cost')::numeric end,
          case jsonb_typeof(t.result #> '{usage,cost}')
            when 'number' then (t.result #>> '{usage,cost}')::numeric end)
          as cost,
        case jsonb_typeof(t.result -> 'latency_ms')
          when 'number' then (t.result ->> 'latency_ms')::numeric end as latency_ms
    ) f
    where t.finished_at >= usage_since
      and t.status in ('completed', 'failed')
      and (only_project is null or t.project_id = only_project)
    group by 1, 2
  ) u;

  -- pg_cron's tables exist only where it is installed, hence dynamic SQL.
  if to_regclass('cron.job') is not null and to_regclass('cron.job_run_details') is not null then
    execute $q$
      select coalesce(jsonb_agg(jsonb_build_object(
               'name', j.jobname, 'schedule', j.schedule, 'active', j.active,
               'last_status', last_run.status, 'last_start', last_run.start_time,
               'last_message', left(last_run.return_message, 200))
             order by j.jobname), '[]')
      from cron.job j
      left join lateral (
        select d.status, d.start_time, d.return_message
        from cron.job_run_details d where d.jobid = j.jobid
        order by d.runid desc limit 1
      ) last_run on true
      where j.jobname like 'ai-tasks-%'
    $q$ into jobs;
  end if;
  select jsonb_build_object(
           'pg_net', to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null,
           'endpoint_source', e.source,
           'enabled', coalesce((select s.dispatch_enabled from ai_queue.ops_settings s
                                where s.id), false),
           'cron_jobs', jobs)
  into dispatch
  from ai_queue.runner_endpoint() e;

  if exists (select from pg_catalog.pg_publication p where p.pubname = 'supabase_realtime') then
    select coalesce(jsonb_agg(pt.schemaname || '.' || pt.tablename order by pt.tablename), '[]')
    into realtime
    from pg_catalog.pg_publication_tables pt
    where pt.pubname = 'supabase_realtime' and pt.schemaname = 'public'
      and pt.tablename in ('ai_tasks', 'chat_messages');
  end if;

  return jsonb_build_object(
    'generated_at', now(),
    'project_id', only_project,
    'usage_days', usage_days,
    'counts', live || finished,
    'windows', windows,
    'usage', usage,
    'dispatch', dispatch,
    'realtime', realtime);
end;
$$;

comment on function public.ai_task_stats(uuid, integer) is
  'The queue at a glance as JSON: counts, oldest due task, 5/60-minute throughput, '
  'failure rate and run-time percentiles, tokens and cost per project and day.';
drop function if exists ai_queue.result_number(jsonb, text);
revoke all on function public.ai_task_stats(uuid, integer) from public, anon, authenticated;
grant execute on function public.ai_task_stats(uuid, integer) to service_role;
