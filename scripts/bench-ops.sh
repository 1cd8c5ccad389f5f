#!/usr/bin/env bash
# Times the operating queries on a large task history: ai_task_stats (all
# projects and one), list_failed_ai_tasks and one retention run, and shows
# which indexes they use. Fills a scratch database of the local cluster that
# it creates and drops itself (KEEP=1 keeps it for a closer look); it never
# touches DATABASE_URL.
#   scripts/bench-ops.sh [finished_tasks=300000]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-300000}
db=bench_ops_$$
url=$(DATABASE_URL= "$root/scripts/db.sh" url "$db")
admin=$(DATABASE_URL= "$root/scripts/db.sh" url postgres)
if ! [[ $n =~ ^[0-9]+$ ]]; then
  echo "bench-ops: finished_tasks must be a whole number, got $n" >&2
  exit 2
fi

psql -X -q "$admin" -c "create database $db"
if [ "${KEEP:-0}" = 1 ]; then
  echo "bench-ops: keeping database $db" >&2
else
  trap 'psql -X -q "$admin" -c "drop database if exists $db with (force)"' EXIT
fi
DATABASE_URL=$url "$root/scripts/migrate.sh" >/dev/null 2>&1

psql -X -q -v ON_ERROR_STOP=1 -v n="$n" "$url" <<'SQL'
\set QUIET on
insert into auth.users (id) select gen_random_uuid() from generate_series(1, 50);
insert into public.projects (owner_id) select id from auth.users;
-- Finished tasks spread over the last 40 days: 90% completed, 8% failed,
-- 2% cancelled, each completed one with the runner's token and cost figures.
insert into public.ai_tasks (project_id, type, status, attempts, result, error, started_at,
                             finished_at, created_at)
select p.ids[1 + i % 50], 'chat_reply', s.status,
       case when s.status = 'cancelled' then 0 else 1 end,
       case when s.status = 'completed' then jsonb_build_object(
         'prompt_tokens', 100 + i % 900, 'completion_tokens', 20 + i % 300,
         'cost', (i % 100) / 10000.0, 'latency_ms', 500 + i % 4000) end,
       case when s.status = 'failed' then 'provider said 503' end,
       case when s.status <> 'cancelled' then f.at - make_interval(secs => 1 + i % 30) end,
       f.at, f.at - interval '1 minute'
from generate_series(1, :n) i
cross join lateral (select now() - make_interval(secs => (i::bigint * 40 * 86400) / :n) as at) f
cross join lateral (select case when i % 50 < 45 then 'completed'
                                when i % 50 < 49 then 'failed' else 'cancelled' end as status) s
cross join (select array_agg(id) as ids from public.projects) p;
insert into public.ai_tasks (project_id, type)
select (select id from public.projects limit 1), 'chat_reply' from generate_series(1, 2000);
insert into public.build_logs (project_id, log_type, message, created_at)
select (select id from public.projects limit 1), 'info', 'x',
       now() - make_interval(secs => (i::bigint * 40 * 86400) / :n)
from generate_series(1, :n) i;
vacuum analyze;
\set QUIET off
\timing on
\echo ai_task_stats(), all projects:
select pg_column_size(public.ai_task_stats()) as stats_bytes;
\echo ai_task_stats(project), one project:
select pg_column_size(public.ai_task_stats((select id from public.projects limit 1)));
\echo list_failed_ai_tasks(), newest 50:
select count(*) from public.list_failed_ai_tasks(max_tasks => 50);
\echo purge_ai_queue_history(), one run (default 30 days, batch 20000):
select public.purge_ai_queue_history();
\timing off
\echo plans:
explain (costs off) select count(*) from public.ai_tasks t
  where t.finished_at >= now() - interval '60 minutes';
explain (costs off) select t.id from public.ai_tasks t where t.status = 'failed'
  order by t.finished_at desc limit 50;
explain (costs off) select t.id from public.ai_tasks t
  where t.finished_at < now() - interval '30 days'
    and t.status in ('completed', 'failed', 'cancelled')
  order by t.finished_at limit 20000;
SQL
