#!/usr/bin/env bash
# The upgrade layer: ALTER EXTENSION pgflow UPDATE from each earlier release keeps every message
# and ends exactly where a fresh install of this version starts; and neither the install nor an
# update can be hijacked (issue #34).
# For each release FROM (0.1.0 and 0.2.0):
#  1. installs FROM from tests/upgrade/pgflow--FROM.sql (its install script, generated with
#     `cargo pgrx schema` at its commit; this version's library still serves it);
#  2. fills it through the 0.1.0 API, which 0.2.0 keeps (fill.sql): policies, ready, delayed,
#     leased, grouped, archived and dead-lettered messages, contracts, bindings, a dedup key;
#  3. runs ALTER EXTENSION pgflow UPDATE (0.1.0 takes the direct script
#     sql/pgflow--0.1.0--NEW.sql, the shortest path Postgres finds);
#  4. checks that every row and id sequence is unchanged (rows.sql), that the catalog equals a
#     fresh install's object for object (catalog.sql), and that the API works on the upgraded
#     database, delivering the old messages as FROM would have (api.sql).
# Then the attacks of issue #34 (attacks.sh): a schema pgflow made before the install, an
# operator planted by a role that kept 0.1.0's CREATE on the schema, standard_conforming_strings
# off, another tool's schema of the same name: each refused, nobody becomes superuser.
# Usage: upgrade.sh VERSION PORT [--generate]. PORT: a running cluster of that version with
# pgflow installed. --generate first drafts sql/pgflow--0.2.0--NEW.sql with
# scripts/upgrade_sql.py, and writes sql/pgflow--0.1.0--NEW.sql from it (a development step;
# the checks are the same either way).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1 port=$2 generate=${3:-}
cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir); ext=$($cfg --sharedir)/extension
here=$ROOT/tests/upgrade
new=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
prev=0.2.0
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
psql_d() { local db=$1; shift; as_postgres "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"; }
catalog() { psql_d "$1" -At -z -0 -f "$here/catalog.sql" >"$2"; }
fresh_db() {
  as_postgres "$bindir/dropdb" --if-exists -h 127.0.0.1 -p "$port" -U postgres "$1"
  as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$1"
  # Only this script acts on these databases: the worker would race its `now`s.
  psql_d "$1" -c "ALTER DATABASE $1 SET pgflow.enabled = off"
}
# An upgrade script's body: everything after its \echo guard line.
body() { sed '1,/^\\echo Use "ALTER EXTENSION pgflow UPDATE"/d' "$1"; }

install -m 644 "$here/pgflow--0.1.0.sql" "$ext/pgflow--0.1.0.sql"
install -m 644 "$here/pgflow--$prev.sql" "$ext/pgflow--$prev.sql"
fresh_db pgflow_up_fresh
psql_d pgflow_up_fresh -c "CREATE EXTENSION pgflow"

if [ "$generate" = --generate ]; then
  fresh_db pgflow_up_old
  psql_d pgflow_up_old -c "CREATE EXTENSION pgflow VERSION '$prev'"
  catalog pgflow_up_old "$tmp/old.catalog"
  catalog pgflow_up_fresh "$tmp/new.catalog"
  steps=$ROOT/scripts/upgrade-steps/$prev--$new
  {
    echo "-- pgflow $prev -> $new: ALTER EXTENSION pgflow UPDATE."
    echo "-- Drafted by scripts/upgrade_sql.py from catalog snapshots of fresh $prev and $new installs"
    echo "-- (tests/upgrade/upgrade.sh 15 PORT --generate); tests/upgrade/upgrade.sh checks it on every"
    echo "-- Postgres version: the upgraded catalog equals a fresh install's, every row survives."
    echo '\echo Use "ALTER EXTENSION pgflow UPDATE" to load this file. \quit'
    echo
    # First the guard (sql/guard.sql: refuses an update that could be hijacked); then the
    # hand-written steps: .pre.sql before the drafted part, .sql after it; then
    # sql/finalize.sql (search_path, roles, owner, grants), so that the upgraded install ends
    # as a fresh one does.
    echo "-- sql/guard.sql, as at the start of the install script."
    cat "$ROOT/sql/guard.sql"; echo
    if [ -f "$steps.pre.sql" ]; then cat "$steps.pre.sql"; echo; fi
    # New tables: the install's own files, named one per line in $steps.tables.
    if [ -f "$steps.tables" ]; then
      while read -r f; do echo "-- $f, as in the install script."; cat "$ROOT/$f"; echo; done <"$steps.tables"
    fi
    python3 "$ROOT/scripts/upgrade_sql.py" "$tmp/old.catalog" "$tmp/new.catalog"
    if [ -f "$steps.sql" ]; then cat "$steps.sql"; fi
    echo
    echo "-- sql/finalize.sql, as at the end of the install script."
    cat "$ROOT/sql/finalize.sql"
  } >"$ROOT/sql/pgflow--$prev--$new.sql"
  # From 0.1.0 in one step: the released 0.1.0 -> 0.2.0 script must not run on its own, since
  # it resolves operators through schema pgflow before anything checks what is there (a role
  # that kept 0.1.0's CREATE on it became superuser). Postgres takes the shortest path, so
  # this script, which runs the guard first, replaces that chain.
  {
    echo "-- pgflow 0.1.0 -> $new in one step: sql/guard.sql, then the released 0.1.0 -> 0.2.0"
    echo "-- script's body, then the 0.2.0 -> $new script's body (written by tests/upgrade/upgrade.sh"
    echo "-- --generate). ALTER EXTENSION pgflow UPDATE takes it instead of the two-step chain."
    echo '\echo Use "ALTER EXTENSION pgflow UPDATE" to load this file. \quit'
    echo
    echo "-- sql/guard.sql: nothing runs before it."
    cat "$ROOT/sql/guard.sql"; echo
    echo "-- The body of sql/pgflow--0.1.0--0.2.0.sql."
    body "$ROOT/sql/pgflow--0.1.0--0.2.0.sql"; echo
    echo "-- The body of sql/pgflow--$prev--$new.sql."
    body "$ROOT/sql/pgflow--$prev--$new.sql"
  } >"$ROOT/sql/pgflow--0.1.0--$new.sql"
  echo "wrote sql/pgflow--$prev--$new.sql and sql/pgflow--0.1.0--$new.sql"
fi
for f in "pgflow--$prev--$new.sql" "pgflow--0.1.0--$new.sql"; do
  [ -f "$ROOT/sql/$f" ] || fail "no upgrade script sql/$f"
  install -m 644 "$ROOT/sql/$f" "$ext/"
done
catalog pgflow_up_fresh "$tmp/fresh.catalog"

for from in 0.1.0 "$prev"; do
  db=pgflow_up_${from//./_}
  fresh_db "$db"
  psql_d "$db" -c "CREATE EXTENSION pgflow VERSION '$from'"
  # 0.2.0 refuses intervals past 100 years already: its poison queue gets the limit itself.
  if [ "$from" = 0.1.0 ]; then cp "$here/fill.sql" "$tmp/fill.sql"
  else sed -e "s/'10000 years'/'100 years'/; s/'1000000 years'/'100 years'/" "$here/fill.sql" >"$tmp/fill.sql"; fi
  psql_d "$db" -f "$tmp/fill.sql" >/dev/null
  psql_d "$db" -f "$here/rows.sql" >"$tmp/rows.before"
  psql_d "$db" -c "ALTER EXTENSION pgflow UPDATE"
  got=$(psql_d "$db" -At -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgflow'")
  [ "$got" = "$new" ] || fail "from $from: extension version $got after the update, expected $new"
  psql_d "$db" -f "$here/rows.sql" >"$tmp/rows.after"
  diff -u "$tmp/rows.before" "$tmp/rows.after" >&2 || fail "from $from: stored rows changed in the update"
  echo "ok: from $from, every row and id sequence survived ($(wc -l <"$tmp/rows.before") lines)"

  catalog "$db" "$tmp/upgraded.catalog"
  if ! cmp -s "$tmp/upgraded.catalog" "$tmp/fresh.catalog"; then
    diff -u <(tr '\0' '\n' <"$tmp/fresh.catalog") <(tr '\0' '\n' <"$tmp/upgraded.catalog") | head -80 >&2
    fail "from $from: the upgraded catalog differs from a fresh install's (- fresh, + upgraded)"
  fi
  echo "ok: from $from, the upgraded catalog equals a fresh $new install's ($(tr -cd '\0' <"$tmp/fresh.catalog" | wc -c) fields)"

  api_out=$(psql_d "$db" -At -f "$here/api.sql" 2>&1) || fail "from $from: the API check failed: $api_out"
  grep -qx 'api ok' <<<"$api_out" || fail "from $from: the API check did not finish: $api_out"
  echo "ok: from $from, the old messages were delivered in order and the API works on the upgraded database"
done

# A dump of the upgraded database restores whole into a new one (pg_restore creates the
# extension), and into one where pgflow is already created without an error: the utility hook
# (this cluster preloads pgflow) runs the dump's CREATE SCHEMA pgflow as IF NOT EXISTS.
as_postgres "$bindir/pg_dump" -h 127.0.0.1 -p "$port" -U postgres -Fc pgflow_up_0_2_0 >"$tmp/up.dump"; chmod 644 "$tmp/up.dump"
psql_d pgflow_up_0_2_0 -f "$here/rows.sql" >"$tmp/rows.dumped"
fresh_db pgflow_up_restored
as_postgres "$bindir/pg_restore" -h 127.0.0.1 -p "$port" -U postgres -d pgflow_up_restored "$tmp/up.dump" \
  || fail "pg_restore into a database without pgflow failed"
psql_d pgflow_up_restored -f "$here/rows.sql" >"$tmp/rows.restored"
diff -u "$tmp/rows.dumped" "$tmp/rows.restored" >&2 || fail "rows differ after a dump and restore"
fresh_db pgflow_up_restored
psql_d pgflow_up_restored -c "CREATE EXTENSION pgflow"
as_postgres "$bindir/pg_restore" -h 127.0.0.1 -p "$port" -U postgres -d pgflow_up_restored "$tmp/up.dump" \
  || fail "pg_restore into a database where pgflow is created failed"
psql_d pgflow_up_restored -f "$here/rows.sql" >"$tmp/rows.restored"
diff -u "$tmp/rows.dumped" "$tmp/rows.restored" >&2 || fail "rows differ after a restore into a database with pgflow"
out=$(psql_d pgflow_up_restored -c "CREATE SCHEMA pgflow AUTHORIZATION postgres" 2>&1) \
  && fail "CREATE SCHEMA pgflow with AUTHORIZATION was skipped too"
grep -q 'already exists' <<<"$out" || fail "CREATE SCHEMA pgflow AUTHORIZATION: $out"
as_postgres "$bindir/dropdb" -h 127.0.0.1 -p "$port" -U postgres pgflow_up_restored
echo "ok: a dump of the upgraded database restores every row into a new database, and into one where pgflow is created (exit 0)"

bash "$here/attacks.sh" "$ver" "$port"
echo "upgrade from 0.1.0 and $prev: all passed"
