#!/usr/bin/env bash
# Shared memory comes back (issue #30): on a cluster of its own, with pgflow.max_queues = 600,
# 1,500 queues are created, used (a send, a read, an archive) and dropped across 10 databases,
# 150 at a time: half by drop_queue, the rest with their database (DROP DATABASE). The claim
# cursor's, the statistics' and the NOTIFY throttle's tables hold 600 queues of all databases,
# so a leak of any shows: afterwards a queue in a new database must get a cursor, and
# worker_status()'s free entries must be back where they started. A database dropped behind
# the hook's back (a test setting keeps its entries) is swept by the launcher. Then one
# database takes more queues than fit: it stops at the reserve (the last eighth), another
# database still gets its share, the refusals are counted in worker_status()'s detail, logged
# once as a WARNING, and everything comes back once they are dropped.
# Usage: leak.sh VERSION
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
dir=/tmp/pgflow-leak-$ver
port=$(free_port)
trap 'cluster_stop "$ver" "$dir"' EXIT
# A worker per database at once (10 made and dropped, plus postgres): more than the default 8.
cluster_start "$ver" "$dir" "$port" "max_worker_processes = 24
pgflow.max_queues = 600"
psql_() { as_postgres "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

psql_ -d postgres -c 'CREATE EXTENSION pgflow'
[ "$(psql_ -d postgres -c 'SHOW pgflow.max_queues')" = 600 ] || fail "pgflow.max_queues is not 600"
room() { psql_ -d postgres -c "SELECT cursor_free || ' ' || stats_free FROM pgflow.worker_status() WHERE datname = 'postgres'"; }
start=$(room)
[ -n "$start" ] || fail "worker_status() has no row for database postgres"
echo "free entries at the start (cursor, statistics): $start"

# Each database: 150 queues, each used; the first 75 dropped by drop_queue.
use_queues() {  # use_queues DB N DROP
  psql_ -d "$1" <<SQL
DO \$\$
DECLARE i integer; id bigint;
BEGIN
    FOR i IN 1..$2 LOOP
        PERFORM pgflow.create_queue('q' || i);
    END LOOP;
END \$\$;
SELECT count(pgflow.send('q' || i, jsonb_build_object('i', i))) FROM generate_series(1, $2) i;
SELECT count(*) FROM generate_series(1, $2) i, pgflow.read('q' || i, '30 s', 1) r;
SELECT count(pgflow.archive('q' || i, 1::bigint)) FROM generate_series(1, $2) i;
SELECT count(pgflow.drop_queue('q' || i)) FROM generate_series(1, $3) i;
SQL
}
for d in $(seq 1 10); do
  as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "leak_$d"
  psql_ -d "leak_$d" -c 'CREATE EXTENSION pgflow'
  use_queues "leak_$d" 150 75 >/dev/null
  held=$(psql_ -d "leak_$d" -c "SELECT count(*) FROM pgflow.cursor_status()")
  [ "$held" = 75 ] || fail "database leak_$d: $held cursor entries after dropping 75 of 150 queues (want 75)"
  as_postgres "$bindir/dropdb" -h 127.0.0.1 -p "$port" -U postgres "leak_$d"
done
ok "1,500 queues used and dropped in 10 databases (each kept 75 cursor entries until its DROP DATABASE)"
[ "$(room)" = "$start" ] || fail "free entries after the churn: $(room) (at the start: $start)"
ok "worker_status()'s free entries are back where they started ($start)"
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres leak_new
psql_ -d leak_new -c 'CREATE EXTENSION pgflow' -c "SELECT pgflow.create_queue('fresh')" \
  -c "SELECT pgflow.send('fresh', '{}')" -c "SELECT count(*) FROM pgflow.read('fresh', '30 s', 1)" >/dev/null
[ "$(psql_ -d leak_new -c "SELECT count(*) FROM pgflow.cursor_status() WHERE queue_name = 'fresh'")" = 1 ] \
  || fail "a queue in a new database has no cursor entry"
ok "a queue in a new database gets its cursor entry"
as_postgres "$bindir/dropdb" -h 127.0.0.1 -p "$port" -U postgres leak_new
[ "$(room)" = "$start" ] || fail "free entries after leak_new: $(room) (at the start: $start)"

# A database dropped without the hook freeing its entries: the launcher's sweep does (it
# runs when the database's worker exits, and every round after).
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres leak_swept
psql_ -d leak_swept -c 'CREATE EXTENSION pgflow'
use_queues leak_swept 20 0 >/dev/null
log_start=$(as_postgres stat -c %s "$dir/server.log")
psql_ -d postgres -c 'SET pgflow.test_keep_dropped_entries = on' -c 'DROP DATABASE leak_swept'
for _ in $(seq 1 150); do
  swept=$(as_postgres tail -c +"$((log_start + 1))" "$dir/server.log" | grep -o "freed [0-9]* shared-memory entries of 1 databases" || true)
  [ -n "$swept" ] && [ "$(room)" = "$start" ] && break
  sleep 0.2
done
# 20 cursor and 20 statistics entries were left behind by the drop, and then freed.
[ "$swept" = "freed 40 shared-memory entries of 1 databases" ] || fail "the sweep's log line: '$swept'"
[ "$(room)" = "$start" ] || fail "free entries after the sweep: $(room) (at the start: $start)"
ok "a database dropped behind the hook's back: its 40 entries were swept by the launcher"

# More queues than fit: 700 in one database. It stops at the reserve, 600 - 600/8 = 525.
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres leak_full
psql_ -d leak_full -c 'CREATE EXTENSION pgflow'
log_start=$(as_postgres stat -c %s "$dir/server.log")
use_queues leak_full 700 0 >/dev/null
[ "$(psql_ -d leak_full -c "SELECT count(*) FROM pgflow.cursor_status()")" = 525 ] \
  || fail "one database should stop at 525 cursor entries"
read -r cfree sfree <<<"$(room)"
[ "$cfree $sfree" = "75 75" ] || fail "free entries with one database at its share: $cfree $sfree (want the reserve, 75 75)"
ok "700 queues in one database: 525 have a cursor entry, the reserve of 75 stays free"
# Another database still gets entries out of the reserve.
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres leak_other
psql_ -d leak_other -c 'CREATE EXTENSION pgflow'
use_queues leak_other 10 0 >/dev/null
[ "$(psql_ -d leak_other -c "SELECT count(*) FROM pgflow.cursor_status()")" = 10 ] \
  || fail "another database did not get its cursor entries from the reserve"
ok "another database gets its 10 cursor entries from the reserve"
as_postgres "$bindir/dropdb" -h 127.0.0.1 -p "$port" -U postgres leak_other
# The worker notices at its next tick: the detail and the one WARNING.
for _ in $(seq 1 100); do
  detail=$(psql_ -d leak_full -c "SELECT detail FROM pgflow.worker_status() WHERE datname = 'leak_full'")
  warned=$(as_postgres tail -c +"$((log_start + 1))" "$dir/server.log" | grep -c "claim cursor's shared table is full" || true)
  [[ "$detail" == "claim cursor: "* ]] && [ "$warned" -ge 1 ] && break
  sleep 0.2
done
[[ "$detail" == "claim cursor: "*"lookups found no entry"*"pgflow.max_queues = 600"* ]] || fail "worker_status()'s detail: '$detail'"
[ "$warned" = 1 ] || fail "the WARNING was logged $warned times (want once)"
ok "the refusals show in worker_status()'s detail and are logged once"
psql_ -d leak_full -c "SELECT count(pgflow.drop_queue('q' || i)) FROM generate_series(1, 700) i" >/dev/null
[ "$(room)" = "$start" ] || fail "free entries after dropping the 700 queues: $(room) (at the start: $start)"
ok "dropping them gives every entry back"
echo "leak: every check passed"
