#!/usr/bin/env bash
# Ids never go back across a failover (issue #29). An asynchronous standby misses 40 sends its
# primary acknowledged; the primary dies; the standby is promoted. On 0.2.0 the promoted server
# issued those 40 ids again to new messages, and an archive by id (without a receipt) of one of
# the lost ones removed a message nobody had read. Now the first write on the new timeline moves
# every id sequence past anything the old timeline could have issued (pgflow._ids_for_timeline).
# Usage: failover_ids.sh VERSION
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
primary=/tmp/pgflow-ids-primary-$ver
standby=/tmp/pgflow-ids-standby-$ver
pport=$(free_port)
trap 'cluster_stop "$ver" "$standby"; cluster_stop "$ver" "$primary"' EXIT
psql_at() { local port=$1; shift; as_postgres "$bindir/psql" -X -At -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d ids "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
poll() {
  local port=$1 sql=$2 i
  for i in $(seq 1 1500); do
    [ "$(psql_at "$port" -c "$sql" 2>/dev/null | tail -1)" = t ] && return 0
    sleep 0.02
  done
  fail "timed out waiting for: $sql"
}

cluster_start "$ver" "$primary" "$pport" "wal_level = replica" "max_wal_senders = 4"
as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$pport" -U postgres -d postgres -c "CREATE DATABASE ids"
psql_at "$pport" -c "CREATE EXTENSION pgflow" -c "SELECT pgflow.create_queue('jobs')" >/dev/null
psql_at "$pport" -c "SELECT pgflow.send('jobs', jsonb_build_object('n', g)) FROM generate_series(1, 10) g" >/dev/null

sport=$(free_port)
as_postgres rm -rf "$standby"
as_postgres "$bindir/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$standby" -R -X stream -c fast \
  2> >(grep -v "skipping special file" >&2)
printf "port = %s\nunix_socket_directories = '%s'\n" "$sport" "$standby" | as_postgres tee -a "$standby/postgresql.conf" >/dev/null
as_postgres "$bindir/pg_ctl" -D "$standby" -l "$standby/server.log" -w -t 60 start >/dev/null
psql_at "$pport" -c "SELECT pgflow.create_queue('marker')" >/dev/null
poll "$sport" "SELECT EXISTS (SELECT 1 FROM pgflow.queue WHERE queue_name = 'marker')"
echo "ok: the standby has replayed the first 10 sends"

# The standby goes away; the primary acknowledges 40 more sends it will never see, then dies.
cluster_stop "$ver" "$standby"
lost=$(psql_at "$pport" -c "SELECT max(pgflow.send('jobs', '{\"lost\": true}')) FROM generate_series(1, 40)")
as_postgres "$bindir/pg_ctl" -D "$primary" -m immediate -w stop >/dev/null
echo "ok: the primary acknowledged sends up to id $lost and died"

as_postgres "$bindir/pg_ctl" -D "$standby" -l "$standby/server.log" -w -t 60 start >/dev/null
as_postgres "$bindir/pg_ctl" -D "$standby" -w promote >/dev/null
poll "$sport" "SELECT NOT pg_is_in_recovery()"
# The timeline now written (pg_control_checkpoint's lags until the next checkpoint).
tli=$(psql_at "$sport" -c "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")

# New sends, from two sessions: none takes a lost id.
first=$(psql_at "$sport" -c "SELECT min(pgflow.send('jobs', '{\"new\": 1}')) FROM generate_series(1, 20)")
second=$(psql_at "$sport" -c "SELECT min(pgflow.send('jobs', '{\"new\": 2}')) FROM generate_series(1, 20)")
[ "$first" -gt "$lost" ] && [ "$second" -gt "$lost" ] || fail "the promoted server issued an id <= $lost: $first, $second"
[ "$first" -gt $(( 2 << 40 )) ] || fail "ids on timeline 2 start below 2 << 40: $first"
echo "ok: on the promoted server (timeline $tli) new ids start at $first, past every lost one ($lost)"

# The failure 0.2.0 had: an archive by id of a lost message removed someone else's.
[ "$(psql_at "$sport" -c "SELECT pgflow.archive('jobs', $lost)")" = f ] || fail "archive of a lost id found a message"
[ "$(psql_at "$sport" -c "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = 'jobs'")" = 50 ] \
  || fail "the queue does not hold its 10 replayed and 40 new messages"
echo "ok: an archive by a lost id finds nothing, and removes nothing"

# The queue's total counts messages, not the ids skipped; a new queue's ids start past too.
[ "$(psql_at "$sport" -c "SELECT total_messages FROM pgflow.metrics('jobs')")" = 50 ] \
  || fail "metrics('jobs').total_messages is not 50 after the skip"
psql_at "$sport" -c "SELECT pgflow.create_queue('after')" >/dev/null
[ "$(psql_at "$sport" -c "SELECT pgflow.send('after', '{}') > (2::bigint << 40)")" = t ] \
  || fail "a queue created after the failover starts its ids below the timeline's"
[ "$(psql_at "$sport" -c "SELECT total_messages FROM pgflow.metrics('after')")" = 1 ] \
  || fail "metrics('after').total_messages counts the ids the new queue skipped"
echo "ok: total_messages stays the number sent (50); a queue made after the failover starts past too"
echo "failover ids: all passed"
