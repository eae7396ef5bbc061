#!/usr/bin/env bash
# The upgrade layer: ALTER EXTENSION pgflow UPDATE from 0.1.0 keeps every message and ends
# exactly where a fresh install of this version starts.
#  1. installs 0.1.0 from tests/upgrade/pgflow--0.1.0.sql (the install script generated from
#     the 0.1.0 commit, f01e407, which this version's library still serves);
#  2. fills it through the 0.1.0 API (fill.sql): policies, ready, delayed, leased, grouped,
#     archived and dead-lettered messages, contracts, bindings, a dedup key;
#  3. runs ALTER EXTENSION pgflow UPDATE;
#  4. checks that every row and id sequence is unchanged (rows.sql), that the catalog equals a
#     fresh install's object for object (catalog.sql), and that the API works on the upgraded
#     database, delivering the old messages as 0.1.0 would have (api.sql).
# Usage: upgrade.sh VERSION PORT [--generate]. PORT: a running cluster of that version with
# pgflow installed. --generate first drafts sql/pgflow--0.1.0--<this version>.sql with
# scripts/upgrade_sql.py (a development step; the check is the same either way).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1 port=$2 generate=${3:-}
cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir); ext=$($cfg --sharedir)/extension
here=$ROOT/tests/upgrade
new=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
upgrade=$ROOT/sql/pgflow--0.1.0--$new.sql
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
psql_d() { local db=$1; shift; as_postgres "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"; }
catalog() { psql_d "$1" -At -z -0 -f "$here/catalog.sql" >"$2"; }

install -m 644 "$here/pgflow--0.1.0.sql" "$ext/pgflow--0.1.0.sql"
for db in pgflow_up_old pgflow_up pgflow_up_fresh; do
  as_postgres "$bindir/dropdb" --if-exists -h 127.0.0.1 -p "$port" -U postgres "$db"
  as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
  # Only this script acts on these databases: the worker would race its `now`s.
  psql_d "$db" -c "ALTER DATABASE $db SET pgflow.enabled = off"
done
psql_d pgflow_up_old -c "CREATE EXTENSION pgflow VERSION '0.1.0'"
psql_d pgflow_up -c "CREATE EXTENSION pgflow VERSION '0.1.0'"
psql_d pgflow_up_fresh -c "CREATE EXTENSION pgflow"

if [ "$generate" = --generate ]; then
  catalog pgflow_up_old "$tmp/old.catalog"
  catalog pgflow_up_fresh "$tmp/new.catalog"
  {
    echo "-- pgflow 0.1.0 -> $new: ALTER EXTENSION pgflow UPDATE."
    echo "-- Drafted by scripts/upgrade_sql.py from catalog snapshots of fresh 0.1.0 and $new installs"
    echo "-- (tests/upgrade/upgrade.sh 15 PORT --generate); tests/upgrade/upgrade.sh checks it on every"
    echo "-- Postgres version: the upgraded catalog equals a fresh install's, every row survives."
    echo "-- Tables keep their rows; message_ready is rebuilt in claim-key order (a lock on"
    echo "-- pgflow.message for as long as the build takes)."
    echo '\echo Use "ALTER EXTENSION pgflow UPDATE" to load this file. \quit'
    echo
    # Hand-written steps: .pre.sql before the drafted part (new tables, which SQL-language
    # bodies need at creation), .sql after it; then sql/finalize.sql (search_path, roles,
    # owner, grants), so that the upgraded install ends as a fresh one does.
    steps=$ROOT/scripts/upgrade-steps/0.1.0--$new
    if [ -f "$steps.pre.sql" ]; then cat "$steps.pre.sql"; echo; fi
    python3 "$ROOT/scripts/upgrade_sql.py" "$tmp/old.catalog" "$tmp/new.catalog"
    if [ -f "$steps.sql" ]; then cat "$steps.sql"; fi
    echo
    echo "-- sql/finalize.sql, as at the end of the install script."
    cat "$ROOT/sql/finalize.sql"
  } >"$upgrade"
  echo "wrote $upgrade"
fi
[ -f "$upgrade" ] || fail "no upgrade script $upgrade"
install -m 644 "$upgrade" "$ext/"

psql_d pgflow_up -f "$here/fill.sql" >/dev/null
psql_d pgflow_up -f "$here/rows.sql" >"$tmp/rows.before"
psql_d pgflow_up -c "ALTER EXTENSION pgflow UPDATE"
got=$(psql_d pgflow_up -At -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgflow'")
[ "$got" = "$new" ] || fail "extension version $got after the update, expected $new"
psql_d pgflow_up -f "$here/rows.sql" >"$tmp/rows.after"
diff -u "$tmp/rows.before" "$tmp/rows.after" >&2 || fail "stored rows changed in the update"
echo "ok: every row and id sequence survived ($(wc -l <"$tmp/rows.before") lines)"

catalog pgflow_up "$tmp/upgraded.catalog"
catalog pgflow_up_fresh "$tmp/fresh.catalog"
if ! cmp -s "$tmp/upgraded.catalog" "$tmp/fresh.catalog"; then
  diff -u <(tr '\0' '\n' <"$tmp/fresh.catalog") <(tr '\0' '\n' <"$tmp/upgraded.catalog") | head -80 >&2
  fail "the upgraded catalog differs from a fresh install's (- fresh, + upgraded)"
fi
echo "ok: the upgraded catalog equals a fresh $new install's ($(tr -cd '\0' <"$tmp/fresh.catalog" | wc -c) fields)"

api_out=$(psql_d pgflow_up -At -f "$here/api.sql" 2>&1) || fail "the API check failed: $api_out"
grep -qx 'api ok' <<<"$api_out" || fail "the API check did not finish: $api_out"
echo "ok: the old messages were delivered in order and the API works on the upgraded database"
echo "upgrade from 0.1.0: all passed"
