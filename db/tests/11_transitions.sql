-- The status machine as a matrix: every operation tried on a task in every
-- status, each on a fresh task, with the attempt that task would hold.
-- Legal moves:
--   queued    -> running (claim), cancelled (cancel)
--   running   -> completed (complete), queued (fail with attempts left,
--                release, an expired lease), failed (fail on the last
--                attempt or not retryable, an expired last lease), cancelled
--   failed    -> queued (retry)
--   cancelled -> queued (retry)
-- Everything else is refused (AQ001 for a worker, AQ003 for an owner action)
-- or returns false, and leaves the task as it was.
begin;
select plan(50);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner@example.test');

-- Creates a task in `status` in a project of its own, so claims find only it
-- ('expired' is a running task whose lease ran out a second ago; a completed
-- task has its answer), runs `operation` on it as the service, and reports
-- "<what the call returned> -> <the task's status after>", or
-- "<SQLSTATE> -> <status after>" when the call raised.
create function pg_temp.try(operation text, status text) returns text
language plpgsql as $$
declare
  project uuid := gen_random_uuid();
  task uuid := gen_random_uuid();
  held integer;
  answer text;
begin
  insert into public.projects (id, owner_id, max_running_tasks)
  values (project, 'a0000000-0000-4000-8000-000000000001', 10);
  insert into public.ai_tasks (id, project_id, type, status, attempts, max_attempts, result,
                               locked_by, locked_until, started_at, finished_at)
  values (task, project, 'chat_reply',
          case when status = 'expired' then 'running' else status end,
          case status when 'queued' then 0 when 'failed' then 3 else 1 end, 3,
          case when status = 'completed' then '{}'::jsonb end,
          case when status in ('running', 'expired') then 'worker-1' end,
          case status when 'running' then now() + interval '1 minute'
                      when 'expired' then now() - interval '1 second' end,
          case when status <> 'queued' then now() end,
          case when status in ('completed', 'failed', 'cancelled') then now() end);
  if status = 'completed' then
    insert into public.chat_messages (project_id, role, content, task_id)
    values (project, 'assistant', 'the answer', task);
  end if;
  -- The attempt a worker would hold: the current one, or the next for a
  -- queued task.
  select greatest(t.attempts, 1) into held from public.ai_tasks t where t.id = task;

  begin
    answer := case operation
      when 'claim' then (select count(*)::text from public.claim_ai_task('w2', project))
      when 'complete' then
        (public.complete_ai_task(task, held, 'answer') is not null)::text
      when 'fail' then public.fail_ai_task(task, held, 'boom')
      when 'fail final' then public.fail_ai_task(task, held, 'boom', retryable => false)
      when 'release' then public.release_ai_task(task, held)::text
      when 'extend' then public.extend_ai_task_lease(task, held)::text
      when 'stream' then public.stream_ai_task_reply(task, held, 'part')::text
      when 'cancel' then public.cancel_ai_task(task)
      when 'retry' then public.retry_ai_task(task)
      when 'reap' then public.reap_expired_ai_tasks()::text
    end;
  exception when others then
    answer := sqlstate;
  end;
  return answer || ' -> ' || (select t.status from public.ai_tasks t where t.id = task);
end;
$$;

-- ---------------------------------------------------------------- queued
select is(pg_temp.try('claim', 'queued'), '1 -> running', 'queued: claim runs it');
select is(pg_temp.try('complete', 'queued'), 'AQ001 -> queued', 'queued: complete is refused');
select is(pg_temp.try('fail', 'queued'), 'AQ001 -> queued', 'queued: fail is refused');
select is(pg_temp.try('release', 'queued'), 'false -> queued', 'queued: release does nothing');
select is(pg_temp.try('extend', 'queued'), 'false -> queued', 'queued: extend does nothing');
select is(pg_temp.try('stream', 'queued'), 'false -> queued', 'queued: stream does nothing');
select is(pg_temp.try('cancel', 'queued'), 'cancelled -> cancelled', 'queued: cancel stops it');
select is(pg_temp.try('retry', 'queued'), 'AQ003 -> queued', 'queued: retry is refused');
select is(pg_temp.try('reap', 'queued'), '0 -> queued', 'queued: the reaper leaves it');

-- ---------------------------------------------------------------- running
select is(pg_temp.try('claim', 'running'), '0 -> running',
  'running: a live lease is not claimed');
select is(pg_temp.try('complete', 'running'), 'true -> completed',
  'running: complete finishes it');
select is(pg_temp.try('fail', 'running'), 'queued -> queued',
  'running: a retryable failure queues it again');
select is(pg_temp.try('fail final', 'running'), 'failed -> failed',
  'running: a failure that is not retryable fails it');
select is(pg_temp.try('release', 'running'), 'true -> queued', 'running: release queues it');
select is(pg_temp.try('extend', 'running'), 'true -> running', 'running: extend keeps it');
select is(pg_temp.try('stream', 'running'), 'true -> running', 'running: stream keeps it');
select is(pg_temp.try('cancel', 'running'), 'cancelled -> cancelled',
  'running: cancel stops it');
select is(pg_temp.try('retry', 'running'), 'AQ003 -> running', 'running: retry is refused');
select is(pg_temp.try('reap', 'running'), '0 -> running',
  'running: the reaper leaves a live lease');

-- ---------------------------------------------------------------- running, lease expired
select is(pg_temp.try('claim', 'expired'), '1 -> running',
  'expired lease: a claim takes it over');
select is(pg_temp.try('reap', 'expired'), '1 -> queued',
  'expired lease: the reaper queues it again');
select is(pg_temp.try('complete', 'expired'), 'true -> completed',
  'expired lease: the holder may still finish while nobody took over');
select is(pg_temp.try('extend', 'expired'), 'true -> running',
  'expired lease: the holder may still renew while nobody took over');

-- ---------------------------------------------------------------- completed
select is(pg_temp.try('claim', 'completed'), '0 -> completed', 'completed: never claimed');
select is(pg_temp.try('complete', 'completed'), 'true -> completed',
  'completed: the same attempt completing again gets its answer back');
select is(pg_temp.try('fail', 'completed'), 'AQ001 -> completed', 'completed: fail is refused');
select is(pg_temp.try('release', 'completed'), 'false -> completed',
  'completed: release does nothing');
select is(pg_temp.try('extend', 'completed'), 'false -> completed',
  'completed: extend does nothing');
select is(pg_temp.try('stream', 'completed'), 'false -> completed',
  'completed: stream does nothing');
select is(pg_temp.try('cancel', 'completed'), 'AQ003 -> completed',
  'completed: cancel is refused');
select is(pg_temp.try('retry', 'completed'), 'AQ003 -> completed',
  'completed: retry is refused');
select is(pg_temp.try('reap', 'completed'), '0 -> completed', 'completed: the reaper leaves it');

-- ---------------------------------------------------------------- failed
select is(pg_temp.try('claim', 'failed'), '0 -> failed', 'failed: never claimed');
select is(pg_temp.try('complete', 'failed'), 'AQ001 -> failed', 'failed: complete is refused');
select is(pg_temp.try('fail', 'failed'), 'AQ001 -> failed',
  'failed: a failure nobody recorded is refused');
select is(pg_temp.try('release', 'failed'), 'false -> failed', 'failed: release does nothing');
select is(pg_temp.try('extend', 'failed'), 'false -> failed', 'failed: extend does nothing');
select is(pg_temp.try('stream', 'failed'), 'false -> failed', 'failed: stream does nothing');
select is(pg_temp.try('cancel', 'failed'), 'AQ003 -> failed', 'failed: cancel is refused');
select is(pg_temp.try('retry', 'failed'), 'queued -> queued', 'failed: retry queues it again');
select is(pg_temp.try('reap', 'failed'), '0 -> failed', 'failed: the reaper leaves it');

-- ---------------------------------------------------------------- cancelled
select is(pg_temp.try('claim', 'cancelled'), '0 -> cancelled', 'cancelled: never claimed');
select is(pg_temp.try('complete', 'cancelled'), 'AQ001 -> cancelled',
  'cancelled: complete is refused');
select is(pg_temp.try('fail', 'cancelled'), 'AQ001 -> cancelled', 'cancelled: fail is refused');
select is(pg_temp.try('release', 'cancelled'), 'false -> cancelled',
  'cancelled: release does nothing');
select is(pg_temp.try('extend', 'cancelled'), 'false -> cancelled',
  'cancelled: extend does nothing');
select is(pg_temp.try('stream', 'cancelled'), 'false -> cancelled',
  'cancelled: stream does nothing');
select is(pg_temp.try('cancel', 'cancelled'), 'cancelled -> cancelled',
  'cancelled: cancelling again is a no-op');
select is(pg_temp.try('retry', 'cancelled'), 'queued -> queued',
  'cancelled: retry queues it again');
select is(pg_temp.try('reap', 'cancelled'), '0 -> cancelled', 'cancelled: the reaper leaves it');

select * from finish();
rollback;
