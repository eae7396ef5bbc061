#!/usr/bin/env bash
# A failover of the receiving site under pg_auto_failover (issue #29; Postgres 15, Debian's
# postgresql-15-auto-failover): site a (a plain cluster, wal_level = logical) forwards a queue
# to site c, a pg_auto_failover formation (tests/cluster/formation.sh: a monitor, node1 the
# primary, node2 its synchronous secondary). c's subscription, link_create's statement with
# synchronous_commit = 'on' added as docs/operations.md says, runs on node1. A producer sends at
# a; node1's whole node is killed mid-stream as when its machine dies (formation.sh's
# kill_node: pg_autoctl and every Postgres process, frozen, then killed); the monitor promotes
# node2, whose copy of the subscription and its
# replication origin goes on from where node2's WAL has it. tests/cluster/ha_links.py checks
# that every acknowledged send arrives at c exactly once, in send order, nothing sent again.
# Usage: ha_links.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
H=/tmp/pgflow-hal
. "$ROOT/tests/cluster/formation.sh"
if [ "${1:-}" = --kill-node ]; then  # ha_links.py's HAL_KILL
  kill_node "$2"
  exit 0
fi
dir_a=/tmp/pgflow-hal-a
trap 'cleanup; cluster_stop 15 "$dir_a"' EXIT
formation_up "max_worker_processes = 16" "wal_retrieve_retry_interval = '1s'"
port_a=$(free_port)
cluster_start 15 "$dir_a" "$port_a" "wal_level = logical" "max_replication_slots = 10" \
  "max_wal_senders = 10" "max_worker_processes = 16"
as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port_a" -U postgres -d postgres \
  -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION pgflow'
echo "synchronous_standby_names on node1: '$("$bindir/psql" -X -At -h 127.0.0.1 -p "$p1" -U postgres -c 'SHOW synchronous_standby_names')'"
export HAL_KILL="bash $ROOT/tests/cluster/ha_links.sh --kill-node node1"
export HAL_MONITOR="host=127.0.0.1 port=$pm user=postgres dbname=pg_auto_failover"
"$PY_PYTHON" -u "$ROOT/tests/cluster/ha_links.py" "$port_a" "$p1" "$p2"
