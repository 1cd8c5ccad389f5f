-- Wake listening workers when tasks are queued: one NOTIFY per statement, so a
-- bulk insert of thousands of tasks sends one message, not thousands.
create or replace function ai_queue.notify_queued() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pg_notify('ai_tasks', 'queued');
  return null;
end;
$$;

create or replace trigger ai_tasks_notify_queued
  after insert on public.ai_tasks
  for each statement execute function ai_queue.notify_queued();

-- Trigger functions cannot be called directly anyway; the grant PostgreSQL
-- gives every new function is revoked so no API role holds one on ai_queue.
revoke all on function ai_queue.notify_queued() from public;
