#!/usr/bin/env bash
# Apply the migrations with dbmate, then every plpgsql source in db/functions.
# Both steps are idempotent, so this is also how an edited function is
# redeployed. Targets DATABASE_URL, or the local cluster's database $1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
url=${DATABASE_URL:-$("$root/scripts/db.sh" url "${1:-postgres}")}

# dbmate's driver insists on TLS unless told otherwise; a local server has none.
dbmate_url=$url
if [[ $url != *sslmode=* && $url =~ @(127\.0\.0\.1|localhost)[:/] ]]; then
  [[ $url == *\?* ]] && dbmate_url+="&" || dbmate_url+="?"
  dbmate_url+="sslmode=disable"
fi

"$root/.tools/node_modules/.bin/dbmate" --url "$dbmate_url" \
  --migrations-dir "$root/db/migrations" --no-dump-schema --wait --wait-timeout 30s up

# Function bodies refer to one another; checking them as they are created
# would make the file order matter.
args=(-X -q -v ON_ERROR_STOP=1 --single-transaction -c 'set check_function_bodies = off')
for f in "$root"/db/functions/*.sql; do args+=(-f "$f"); done
PGOPTIONS='--client-min-messages=warning' psql "$url" "${args[@]}"
echo "migrate: schema and functions are up to date" >&2
