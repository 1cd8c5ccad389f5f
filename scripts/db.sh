#!/usr/bin/env bash
# The project-local PostgreSQL 15 cluster: install, start, stop, status, url.
#
# Lives in .db/ (git-ignored), listens on 127.0.0.1:$PGPORT only, trusts local
# connections (it is a development cluster that never leaves this machine) and
# preloads pg_cron. As root the server runs as the `postgres` user, because
# PostgreSQL refuses to run as root. With DATABASE_URL set nothing local starts.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pgbin=/usr/lib/postgresql/15/bin
data="$root/.db/data"
sock="$root/.db/run"
log="$root/.db/postgres.log"
port=${PGPORT:-54329}

say() { printf 'db: %s\n' "$*" >&2; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_packages() {
  local missing=()
  [ -x "$pgbin/postgres" ] || missing+=(postgresql-15)
  [ -f /usr/share/postgresql/15/extension/pgtap.control ] || missing+=(postgresql-15-pgtap)
  [ -f /usr/lib/postgresql/15/lib/pg_cron.so ] || missing+=(postgresql-15-cron)
  command -v pg_prove >/dev/null || missing+=(libtap-parser-sourcehandler-pgtap-perl)
  command -v psql >/dev/null || missing+=(postgresql-client-15)
  [ ${#missing[@]} -eq 0 ] && return 0

  say "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

running() {
  [ -f "$data/postmaster.pid" ] && as_owner "$pgbin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

init_cluster() {
  mkdir -p "$root/.db" "$sock"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$root/.db" "$sock"; fi
  say "creating a cluster in $data"
  as_owner "$pgbin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >/dev/null
  cat >>"$data/postgresql.conf" <<CONF

# process-ai-tasks development settings
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
max_connections = 300
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
# Durability stays at PostgreSQL's defaults (fsync, synchronous_commit on):
# the benchmarks compare queues under the settings production uses.
CONF
}

start() {
  if [ -n "${DATABASE_URL:-}" ]; then
    say "DATABASE_URL is set; not starting a local cluster"
    return 0
  fi
  install_packages
  if running; then return 0; fi
  [ -f "$data/PG_VERSION" ] || init_cluster
  as_owner "$pgbin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null
  say "PostgreSQL 15 is up on 127.0.0.1:$port"
}

stop() {
  if running; then
    as_owner "$pgbin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    say "stopped"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo running; else echo stopped; exit 1; fi ;;
  url) echo "${DATABASE_URL:-postgres://postgres@127.0.0.1:$port/${2:-postgres}}" ;;
  install) install_packages ;;
  *) echo "usage: $0 start|stop|restart|status|url [dbname]|install" >&2; exit 2 ;;
esac
