#!/usr/bin/env bash
# The pg_cron jobs on the real extension. pg_cron can only be created in the
# database named by cron.database_name, `postgres` on the local cluster, so
# this migrates that database (as `make run` does; the retention job is
# scheduled there for real) and runs db/tests/79_ops_pg_cron_live.sql in it,
# which rolls back whatever it changes. Elsewhere that file skips itself.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
port=${PGPORT:-54329}
DATABASE_URL= "$root/scripts/db.sh" start
DATABASE_URL= "$root/scripts/migrate.sh" postgres
pg_prove --dbname postgres --host 127.0.0.1 --port "$port" --username postgres \
  "$root/db/tests/79_ops_pg_cron_live.sql"
