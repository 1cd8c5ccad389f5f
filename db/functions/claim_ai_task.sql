-- claim_ai_task: hand up to batch_size due tasks to one worker, fairly.
--
-- Takes queued tasks whose run_at has come (first handing back expired
-- leases) and marks them running under a lease, returning each with its
-- fencing token (`attempt`) and the chat history it should answer. Within a
-- project the order is priority, then due time, then age. Across projects:
--   * a project runs at most projects.max_running_tasks tasks at once
--     (ai_queue_settings.default_max_running_tasks when null);
--   * a batch goes round-robin: the first task of each project with spare
--     room, then the second, ..., so one project's backlog cannot fill it;
--     tasks already running count as earlier turns, so successive claims
--     favour the projects with the fewest tasks in flight;
--   * no task is handed out whose model (the task's, or the default model) is
--     paused by a Retry-After or has used its requests_per_minute or
--     tokens_per_minute in the current minute (public.ai_model_limits).
--
-- Locking, in an order that cannot deadlock: each candidate project is taken
-- with a transaction-scoped advisory lock, tried and never waited for, so
-- concurrent claims count a project's running tasks one at a time and pass on
-- to other projects instead of queueing (a claim filtered on a project that
-- another claim is deciding gets nothing, as SKIP LOCKED would give it);
-- then the limited models' rows (waited for, in model order); then the tasks
-- themselves with SKIP LOCKED.
--
-- Index choice. Autovacuum tends to visit ai_tasks while the queue is
-- empty, and a partial index vacuumed while empty is estimated empty however
-- much it has grown since. With every queued-task index looking empty, the
-- planner once read a project's due tasks by scanning another of them whole
-- and sorting, every queued task once per project (a drain of 20,000 ran at
-- 300 tasks/s instead of 1,900). Every read below comes out of an index
-- already in the order it needs, so the function disables sorting: a plan
-- that would sort what it read is a plan that read the wrong index. Where a
-- read is by id, the status is tested after it (step 4), so that no
-- queued-task index is a candidate at all.
create or replace function public.claim_ai_task(
  worker_id text,
  project_id uuid default null,
  batch_size integer default 1,
  lease_seconds integer default 300
) returns setof public.ai_task_claim
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set jit = off
set enable_sort = off
as $$
#variable_conflict use_column
declare
  settings public.ai_queue_settings;
  lease_until timestamptz;
  this_window timestamptz := date_trunc('minute', now());
  -- Advisory lock space of "a claim is deciding this project's tasks".
  lock_space constant integer := hashtext('ai_queue.claim_project');
  blocked_models text[];
  model_room boolean;
  excluded uuid[];
  locked_projects uuid[] := '{}';
  window_rows integer;
  -- Projects weighed beyond batch_size, so that a claim can prefer one with
  -- fewer tasks in flight to a busier one whose head task is older.
  lookahead constant integer := 3;
  -- Due tasks read past the last window to find them, at most.
  lookahead_rows constant integer := 64;
  wanted_projects integer;
  rows_read integer;
  head record;
  extra record;
  -- Where the last window ended; the first starts before every task.
  last_key record;
  fair_ids uuid[];
  fair_models text[];
  picked uuid[];
  scan_round integer := 0;
begin
  if worker_id is null or length(btrim(worker_id)) = 0 or length(worker_id) > 200 then
    perform ai_queue.invalid_argument('worker_id', 'must be 1 to 200 characters',
      quote_literal(worker_id), 'Name the worker, e.g. its host and process id.');
  end if;
  if batch_size is null or batch_size not between 1 and 1000 then
    perform ai_queue.invalid_argument('batch_size', 'must be between 1 and 1000',
      batch_size::text);
  end if;
  if lease_seconds is null or lease_seconds not between 5 and 3600 then
    perform ai_queue.invalid_argument('lease_seconds', 'must be between 5 and 3600',
      lease_seconds::text, 'Extend a long task''s lease with extend_ai_task_lease.');
  end if;
  lease_until := now() + make_interval(secs => lease_seconds);
  settings := ai_queue.settings();
  select null::uuid as project_id, -1000 as neg_priority, '-infinity'::timestamptz as run_at,
         '-infinity'::timestamptz as created_at,
         '00000000-0000-0000-0000-000000000000'::uuid as id
    into last_key;

  -- Tasks whose worker vanished become claimable again (or fail) first. The
  -- check is an index probe; the reaper itself costs more, so it runs only
  -- when there is something to reap.
  if exists (select 1 from public.ai_tasks t
             where t.status = 'running' and t.locked_until < now()) then
    perform ai_queue.reap_expired_leases(batch_size);
  end if;

  -- Models not to hand out now. A model without a row has no limit.
  select coalesce(array_agg(l.model), '{}') into blocked_models
  from public.ai_model_limits l
  where l.paused_until > now()
     or l.requests_per_minute <= case when l.window_start = this_window
                                      then l.window_requests else 0 end
     or l.tokens_per_minute <= case when l.window_start = this_window
                                    then l.window_tokens else 0 end;

  -- While some model is blocked, first make sure a due task of another model
  -- exists: the usual 429 pauses the only model in use, and the scans below
  -- would read every queued task to find none they may take. The distinct
  -- models come from a skip scan of the queued-model index, a few probes.
  if cardinality(blocked_models) > 0 then
    with recursive queued_models as (
      (select t.model from public.ai_tasks t
       where t.status = 'queued' and t.model is not null
       order by t.model limit 1)
      union all
      select (select t.model from public.ai_tasks t
              where t.status = 'queued' and t.model > q.model
              order by t.model limit 1)
      from queued_models q
      where q.model is not null
    )
    select exists (
             select 1 from queued_models q
             where q.model <> all (blocked_models)
               and exists (select 1 from public.ai_tasks t
                           where t.status = 'queued' and t.model = q.model
                             and t.run_at <= now()))
           or (settings.default_model <> all (blocked_models)
               and exists (select 1 from public.ai_tasks t
                           where t.status = 'queued' and t.model is null
                             and t.run_at <= now()))
      into model_room;
    if not model_room then
      return;
    end if;
  end if;

  -- Projects at their cap are skipped by the scans below. A project can only
  -- be at its cap with running tasks, so this reads the (short) running set.
  select coalesce(array_agg(r.project_id), '{}') into excluded
  from (
    select t.project_id, count(*) as running
    from public.ai_tasks t
    where t.status = 'running'
    group by t.project_id
  ) r
  where r.running >= coalesce((select p.max_running_tasks from public.projects p
                               where p.id = r.project_id),
                              settings.default_max_running_tasks);

  -- Step 1: find batch_size + lookahead candidate projects, best head task
  -- first, and take each one's advisory lock; a project another claim is
  -- deciding right now is passed over. A window of twice as many due tasks
  -- usually spans enough projects; when a few projects' backlogs fill it,
  -- the next round carries on after the window's last task (the keyset
  -- index) and leaves out the projects already seen. A scan costs what it
  -- passes: tasks of projects at their cap or of blocked models ahead in the
  -- order are read and skipped.
  wanted_projects := batch_size + lookahead;
  window_rows := wanted_projects * 2;
  if claim_ai_task.project_id is not null then
    -- Another claim deciding this project holds the tasks it would take, as
    -- SKIP LOCKED would: pass, rather than wait for its commit.
    if not claim_ai_task.project_id = any (excluded)
       and pg_catalog.pg_try_advisory_xact_lock(lock_space,
                                               hashtext(claim_ai_task.project_id::text)) then
      locked_projects := array[claim_ai_task.project_id];
    end if;
  else
    loop
      scan_round := scan_round + 1;
      rows_read := 0;
      for head in
        select t.project_id, -t.priority as neg_priority, t.run_at, t.created_at, t.id
        from public.ai_tasks t
        where t.status = 'queued' and t.run_at <= now()
          and (-t.priority, t.run_at, t.created_at, t.id)
              > (last_key.neg_priority, last_key.run_at, last_key.created_at, last_key.id)
          and t.project_id <> all (excluded)
          and coalesce(t.model, settings.default_model) <> all (blocked_models)
        order by -t.priority, t.run_at, t.created_at, t.id
        limit window_rows
      loop
        rows_read := rows_read + 1;
        last_key := head;
        if not head.project_id = any (excluded) then
          excluded := excluded || head.project_id;
          if pg_catalog.pg_try_advisory_xact_lock(lock_space, hashtext(head.project_id::text))
          then
            locked_projects := locked_projects || head.project_id;
            exit when cardinality(locked_projects) >= wanted_projects;
          end if;
        end if;
      end loop;
      exit when rows_read < window_rows or cardinality(locked_projects) >= batch_size
             or scan_round >= 5;
    end loop;

    -- The projects weighed beyond batch_size are worth a short look past the
    -- last window, never a long scan: a backlog ahead simply ends the look.
    if cardinality(locked_projects) between batch_size and wanted_projects - 1
       and rows_read = window_rows then
      for extra in
        select h.project_id
        from (
          select t.project_id, t.model
          from public.ai_tasks t
          where t.status = 'queued' and t.run_at <= now()
            and (-t.priority, t.run_at, t.created_at, t.id)
                > (last_key.neg_priority, last_key.run_at, last_key.created_at, last_key.id)
          order by -t.priority, t.run_at, t.created_at, t.id
          limit lookahead_rows
        ) h
        where h.project_id <> all (excluded)
          and coalesce(h.model, settings.default_model) <> all (blocked_models)
      loop
        if not extra.project_id = any (excluded) then
          excluded := excluded || extra.project_id;
          if pg_catalog.pg_try_advisory_xact_lock(lock_space, hashtext(extra.project_id::text))
          then
            locked_projects := locked_projects || extra.project_id;
            exit when cardinality(locked_projects) >= wanted_projects;
          end if;
        end if;
      end loop;
    end if;
  end if;

  if cardinality(locked_projects) = 0 then
    return;
  end if;

  -- Step 2: with the projects locked, a fresh read of each one's running
  -- count and due tasks (a claim that held a lock before us has committed),
  -- dealt round-robin: every project's first task, then every second ...
  -- Tasks already running count as turns dealt earlier, so a project with
  -- three in flight gets its next only after the others have three too; the
  -- batch of one a busy worker pool claims goes to the least served project
  -- among those it weighed. A project with no projects.max_running_tasks
  -- falls back to the default.
  with counted as (
    select lp.project_id,
           coalesce((select p.max_running_tasks from public.projects p
                     where p.id = lp.project_id),
                    settings.default_max_running_tasks) as cap,
           (select count(*)::integer from public.ai_tasks r
            where r.status = 'running' and r.project_id = lp.project_id) as running
    from unnest(locked_projects) lp (project_id)
  ), room as materialized (
    select c.project_id, c.running, c.cap - c.running as spare,
           max(c.running) over () as most_running
    from counted c
  ), dealt as (
    select d.id, d.model,
           row_number() over (order by d.turn, d.priority desc, d.run_at, d.created_at,
                              d.id) as pick_order
    from (
      select t.id, t.priority, t.run_at, t.created_at,
             coalesce(t.model, settings.default_model) as model,
             t.running + row_number() over (partition by t.project_id
                                            order by t.priority desc, t.run_at, t.created_at,
                                                     t.id) as turn
      from room
      cross join lateral (
        select t.id, t.project_id, t.priority, t.run_at, t.created_at, t.model, room.running
        from public.ai_tasks t
        where t.project_id = room.project_id
          and t.status = 'queued' and t.run_at <= now()
          and coalesce(t.model, settings.default_model) <> all (blocked_models)
        order by t.priority desc, t.run_at, t.created_at
        -- How deep the dealing can reach into one project: past the turns it
        -- is behind the busiest, a project's j-th task comes after a task of
        -- each of the k projects, so j <= batch_size - k + 1.
        limit least(room.spare, batch_size,
                    greatest(room.most_running - room.running,
                             batch_size - cardinality(locked_projects) + 1, 1))
      ) t
      where room.spare > 0
    ) d
  )
  select array_agg(dealt.id order by dealt.pick_order),
         array_agg(dealt.model order by dealt.pick_order)
    into fair_ids, fair_models
  from dealt;

  if fair_ids is null then
    return;
  end if;

  -- Step 3: the limited models' rows, locked so that concurrent claims count
  -- one model's requests one at a time, then each model's remaining room in
  -- this minute caps how many of its tasks the batch takes.
  perform 1 from public.ai_model_limits l
  where l.model = any (fair_models)
    and (l.requests_per_minute is not null or l.tokens_per_minute is not null)
  order by l.model
  for update;

  select array_agg(m.id order by m.n) into picked
  from (
    select f.id, f.n
    from (
      select f.id, f.n, f.model,
             row_number() over (partition by f.model order by f.n) as model_turn
      from unnest(fair_ids, fair_models) with ordinality f (id, model, n)
    ) f
    left join public.ai_model_limits l on l.model = f.model
    where l.model is null
       or (coalesce(l.paused_until, '-infinity') <= now()
           and (l.requests_per_minute is null
                or f.model_turn <= l.requests_per_minute
                   - case when l.window_start = this_window then l.window_requests else 0 end)
           and (l.tokens_per_minute is null
                or l.tokens_per_minute > case when l.window_start = this_window
                                              then l.window_tokens else 0 end))
    order by f.n
    limit batch_size
  ) m;

  if picked is null then
    return;
  end if;

  -- Step 4: lock the picked tasks (still queued: nobody else decides these
  -- projects now, but a cancel may hold one), mark them running, count them
  -- in their models' windows, and hand them out in the dealt order.
  -- The status is tested after the lookup by id, not in it: a condition on
  -- status would make the queued-task indexes candidates for this read (see
  -- "Index choice" above).
  with locked as materialized (
    select t.id, t.status from public.ai_tasks t
    where t.id = any (picked)
    for update skip locked
  )
  select array_agg(x.id) into picked
  from locked x
  where x.status = 'queued';

  if picked is null then
    return;
  end if;

  update public.ai_model_limits l set
    window_requests = case when l.window_start = this_window
                           then l.window_requests else 0 end + c.requests,
    window_tokens = case when l.window_start = this_window then l.window_tokens else 0 end,
    window_start = this_window,
    updated_at = now()
  from (
    select coalesce(t.model, settings.default_model) as model, count(*)::integer as requests
    from public.ai_tasks t
    where t.id = any (picked)
    group by 1
  ) c
  where l.model = c.model
    and (l.requests_per_minute is not null or l.tokens_per_minute is not null);

  -- The history is the project's last ten messages written up to the task's
  -- creation, oldest first, as [{role, content}]; a reply still being
  -- streamed is left out. It is read here, in the claim's own statement,
  -- rather than through a function per task: one plan, kept for the session
  -- (a function call per task cost a fifth of a claim of 50).
  --
  -- A claim writes no build log of its own: the task row holds its attempt,
  -- start and worker, and every end of an attempt (completed, failed,
  -- released, snoozed, lease expired) logs the worker and the attempt.
  return query
  with claimed as (
    update public.ai_tasks t set
      status = 'running',
      attempts = t.attempts + 1,
      started_at = now(),
      locked_by = claim_ai_task.worker_id,
      locked_until = lease_until,
      updated_at = now()
    where t.id = any (picked)
    returning t.*
  )
  select c.id, c.project_id, c.user_id, c.type, c.payload, c.model, c.priority,
         c.attempts, c.max_attempts, c.created_at, c.locked_until, h.history
  from claimed c
  cross join lateral (
    select coalesce(jsonb_agg(jsonb_build_object('role', m.role, 'content', m.content)
                              order by m.created_at, m.seq),
                    '[]'::jsonb) as history
    from (
      select cm.role, cm.content, cm.created_at, cm.seq
      from public.chat_messages cm
      where cm.project_id = c.project_id
        and cm.created_at <= c.created_at
        and not cm.streaming
      order by cm.created_at desc, cm.seq desc
      limit 10
    ) m
  ) h
  order by array_position(fair_ids, c.id);
end;
$$;

comment on function public.claim_ai_task(text, uuid, integer, integer) is
  'Claim up to batch_size due tasks for worker_id under a lease of lease_seconds, '
  'round-robin across projects within their running caps and the models'' limits; '
  'returns each with its fencing token (attempt) and chat history.';
revoke all on function public.claim_ai_task(text, uuid, integer, integer)
  from public, anon, authenticated;
grant execute on function public.claim_ai_task(text, uuid, integer, integer)
  to service_role;
