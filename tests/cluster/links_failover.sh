#!/usr/bin/env bash
# A failover of the sending site with failover slots (issue #29; Postgres 17 and later): site a
# (primary), its physical standby a2 (synchronous, sync_replication_slots = on, hot standby
# feedback) and site c. c subscribes to a with link_create(..., failover => true)'s statement
# and a connection string that names both a and a2 with target_session_attrs=read-write. A
# producer sends at a; a is killed (-9) mid-stream and a2 promoted; the producer goes on at a2.
# tests/cluster/links_failover.py checks that the link's slot was synced to a2 before the
# failover, that c goes on from a2 by itself, that nothing is sent again (no pgflow_resent) and
# that every acknowledged send, of a and of a2, arrives at c exactly once, in send order.
# Usage: links_failover.sh VERSION
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
ver=$1
if [ "$ver" -lt 17 ]; then
  echo "Postgres $ver has no failover slots (17 and later): the sending site's failover is checked on 17 and 18"
  exit 0
fi
bindir=$("$(pg_config_for "$ver")" --bindir)
base=/tmp/pgflow-lfo-$ver
cleanup() { for s in a a2 c; do cluster_stop "$ver" "$base-$s"; done; }
trap cleanup EXIT
common=("wal_level = logical" "fsync = off" "max_worker_processes = 16" "max_replication_slots = 10"
  "max_wal_senders = 10" "wal_retrieve_retry_interval = '1s'" "hot_standby_feedback = on")
port_a=$(free_port)
cluster_start "$ver" "$base-a" "$port_a" "${common[@]}"
psql_() { local p=$1; shift; as_postgres "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$p" -U postgres -d postgres "$@"; }
psql_ "$port_a" -c 'CREATE EXTENSION pgflow' -c "SELECT pg_create_physical_replication_slot('a2')" >/dev/null
# The standby: a base backup of a, streaming through its slot, keeping a's failover slots.
port_a2=$(free_port)
as_postgres rm -rf "$base-a2"
as_postgres "$bindir/pg_basebackup" -h 127.0.0.1 -p "$port_a" -U postgres -D "$base-a2" -X stream -S a2 2>&1 \
  | { grep -v 'skipping special file "./.s.PGSQL' || true; } >&2
{
  echo "port = $port_a2"
  echo "unix_socket_directories = '$base-a2'"
  echo "synchronized_standby_slots = ''"
  echo "synchronous_standby_names = ''"
  echo "sync_replication_slots = on"
  echo "primary_slot_name = 'a2'"
  echo "primary_conninfo = 'host=127.0.0.1 port=$port_a user=postgres dbname=postgres application_name=a2'"
} | as_postgres tee -a "$base-a2/postgresql.conf" >/dev/null
as_postgres touch "$base-a2/standby.signal"
as_postgres "$bindir/pg_ctl" -D "$base-a2" -l "$base-a2/server.log" -w -t 60 start >/dev/null \
  || { cat "$base-a2/server.log" >&2; die "the standby did not start"; }
# Once the standby streams: commits wait for it (no acknowledged send is lost in the failover),
# and no logical walsender sends what it has not got (a remote never holds a message a2 lacks).
for _ in $(seq 1 600); do
  [ "$(psql_ "$port_a" -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'a2' AND state = 'streaming'")" = 1 ] && break
  sleep 0.1
done
psql_ "$port_a" -c "ALTER SYSTEM SET synchronous_standby_names = 'a2'" \
  -c "ALTER SYSTEM SET synchronized_standby_slots = 'a2'" -c "SELECT pg_reload_conf()" >/dev/null
port_c=$(free_port)
cluster_start "$ver" "$base-c" "$port_c" "${common[@]}"
psql_ "$port_c" -c 'CREATE EXTENSION pgflow'
"$PY_PYTHON" -u "$ROOT/tests/cluster/links_failover.py" "$bindir" "$base-a" "$port_a" "$base-a2" "$port_a2" "$port_c"
