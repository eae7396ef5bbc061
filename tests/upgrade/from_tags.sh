#!/usr/bin/env bash
# The upgrade layer, with the earlier releases as they were released (issue #30): each release
# built from its released sources (scripts/releases.sh: kept in tests/upgrade/releases/, checked
# against its commit where the clone has it) runs on a cluster of its own, and the database
# goes from the oldest release Postgres VERSION had to this version one release at a time, each
# step with that release's own library loaded, and messages in flight all the way:
#  1. the oldest release's library (loaded through dynamic_library_path; the postmaster's
#     memory map shows which file) creates pgflow at its version and fills it (fill.sql:
#     ready, delayed, leased, grouped, archived and dead-lettered messages, policies,
#     contracts, bindings, a dedup key);
#  2. for each later release: a restart with its library, ALTER EXTENSION pgflow UPDATE TO it
#     (the scripts it released), every row and id sequence unchanged;
#  3. a restart with this version's library, ALTER EXTENSION pgflow UPDATE: every row
#     unchanged, the catalog equal to a fresh install's, the old messages delivered (api.sql).
# The install script each tag builds is the one installed here, and it must hold the same
# statements as the one kept in tests/upgrade/ (which upgrade.sh installs, and
# sql/released.sha256 pins). 0.1.0 was released for Postgres 15, 17
# and 18 only: on 16 the chain starts at 0.2.0.
# Usage: from_tags.sh VERSION (the releases built first: scripts/releases.sh build VERSION)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1
cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir); ext=$($cfg --sharedir)/extension
here=$ROOT/tests/upgrade
new=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
dir=/tmp/pgflow-tags-$ver
port=$(free_port)
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'cluster_stop "$ver" "$dir"; rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
psql_d() { local db=$1; shift; as_postgres "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"; }

# The releases this major had, oldest first, and their libraries.
tags=() libs=()
for tag in $(bash "$ROOT/scripts/releases.sh" list); do
  rc=0; d=$(bash "$ROOT/scripts/releases.sh" dir "$tag" "$ver") || rc=$?
  if [ "$rc" = 2 ]; then echo "note: $tag was not released for Postgres $ver"; continue; fi
  [ "$rc" = 0 ] || fail "release $tag for Postgres $ver is not built"
  v=${tag#v}
  # The same statements; pgrx may order its generated entities differently from one build to
  # another (v0.2.0 for 16, 17 and 18 puts one block elsewhere than for 15).
  cmp -s <(sort "$d/pgflow--$v.sql") <(sort "$here/pgflow--$v.sql") \
    || fail "the install script $tag builds differs from tests/upgrade/pgflow--$v.sql"
  # The release as built from its released sources for this major: its own install script.
  install -m 644 "$d/pgflow--$v.sql" "$ext/pgflow--$v.sql"
  tags+=("$tag"); libs+=("$d")
done
[ "${#tags[@]}" -gt 0 ] || fail "no earlier release for Postgres $ver (tests/upgrade/releases/MANIFEST)"
echo "ok: the install scripts built from ${tags[*]} hold the statements kept in tests/upgrade/"

# Which pgflow.so the postmaster has mapped.
loaded() { as_postgres grep -o '/[^ ]*/pgflow\.so$' "/proc/$(as_postgres head -1 "$dir/postmaster.pid")/maps" | head -1; }
# A restart with the library in $1 (empty: this version's, from $libdir).
restart_with() {
  local path=${1:+$1:}'$libdir'
  as_postgres "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
  echo "dynamic_library_path = '$path'" | as_postgres tee -a "$dir/postgresql.conf" >/dev/null
  as_postgres "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
    || { cat "$dir/server.log" >&2; fail "Postgres $ver did not start with the library of ${1:-this version}"; }
  local want=${1:-$($cfg --pkglibdir)}
  [ "$(loaded)" = "$want/pgflow.so" ] || fail "the postmaster loaded $(loaded), not $want/pgflow.so"
}

# The workers stay off: only this script acts, so nothing moves between the snapshots.
cluster_start "$ver" "$dir" "$port" "pgflow.enabled = off"
restart_with "${libs[0]}"
first=${tags[0]#v}
psql_d postgres -c "CREATE DATABASE pgflow_chain" -c "CREATE DATABASE pgflow_fresh"
psql_d pgflow_chain -c "CREATE EXTENSION pgflow VERSION '$first'"
# 0.2.0 refuses intervals past 100 years already: its poison queue gets the limit itself.
if [ "$first" = 0.1.0 ]; then cp "$here/fill.sql" "$tmp/fill.sql"
else sed -e "s/'10000 years'/'100 years'/; s/'1000000 years'/'100 years'/" "$here/fill.sql" >"$tmp/fill.sql"; fi
psql_d pgflow_chain -f "$tmp/fill.sql" >/dev/null
psql_d pgflow_chain -f "$here/rows.sql" >"$tmp/rows.before"
echo "ok: $first created and filled with its own library ($(loaded))"

for i in $(seq 1 $(( ${#tags[@]} - 1 ))); do
  v=${tags[$i]#v}
  restart_with "${libs[$i]}"
  psql_d pgflow_chain -c "ALTER EXTENSION pgflow UPDATE TO '$v'"
  psql_d pgflow_chain -f "$here/rows.sql" >"$tmp/rows.after"
  diff -u "$tmp/rows.before" "$tmp/rows.after" >&2 || fail "to $v: stored rows changed in the update"
  echo "ok: updated to $v with its own library, every row and id sequence unchanged"
done

restart_with ""
psql_d pgflow_chain -c "ALTER EXTENSION pgflow UPDATE"
got=$(psql_d pgflow_chain -At -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgflow'")
[ "$got" = "$new" ] || fail "extension version $got after the update, expected $new"
psql_d pgflow_chain -f "$here/rows.sql" >"$tmp/rows.after"
diff -u "$tmp/rows.before" "$tmp/rows.after" >&2 || fail "to $new: stored rows changed in the update"
psql_d pgflow_fresh -c "CREATE EXTENSION pgflow"
psql_d pgflow_chain -At -z -0 -f "$here/catalog.sql" >"$tmp/upgraded.catalog"
psql_d pgflow_fresh -At -z -0 -f "$here/catalog.sql" >"$tmp/fresh.catalog"
if ! cmp -s "$tmp/upgraded.catalog" "$tmp/fresh.catalog"; then
  diff -u <(tr '\0' '\n' <"$tmp/fresh.catalog") <(tr '\0' '\n' <"$tmp/upgraded.catalog") | head -80 >&2
  fail "the catalog after ${tags[*]} -> $new differs from a fresh install's (- fresh, + upgraded)"
fi
api_out=$(psql_d pgflow_chain -At -f "$here/api.sql" 2>&1) || fail "the API check failed: $api_out"
grep -qx 'api ok' <<<"$api_out" || fail "the API check did not finish: $api_out"
echo "ok: ${tags[*]} -> $new, each with its own library: every row kept, the catalog a fresh install's, the old messages delivered"
