#!/usr/bin/env bash
# Failover under pg_auto_failover (Debian's postgresql-15-auto-failover), Postgres 15, on
# loopback: a monitor, a primary and a secondary with synchronous replication, pgflow preloaded
# on both nodes. tests/cluster/ha.py puts producers and consumers under load through a
# multi-host connection string, kills the primary's whole node (its pg_autoctl and every
# Postgres process, frozen then killed, as when the machine dies: formation.sh's kill_node),
# lets the monitor fail over,
# restarts the old node (it rejoins as a secondary, after pg_rewind), and checks what #17
# asks: every acknowledged send archived exactly once, leases back, the worker running on the
# new primary within seconds and idle on the old one, no id reused for another message.
#
# The formation is tests/cluster/formation.sh's (its monitor's health checks shortened; ha.py
# checks that node1 is still the primary when it kills it).
#   Usage: ha.sh [sync|async]   (async: the secondary leaves the replication quorum)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
mode=${1:-sync}
H=/tmp/pgflow-ha
. "$ROOT/tests/cluster/formation.sh"
if [ "$mode" = --start-node ]; then  # ha.py's HA_RESTART: start_node with this script's setup
  start_node "$2"
  exit 0
fi
if [ "$mode" = --kill-node ]; then  # ha.py's HA_KILL
  kill_node "$2"
  exit 0
fi
trap cleanup EXIT
formation_up

if [ "$mode" = async ]; then
  autoctl set node replication-quorum false --pgdata "$H/node2" >>"$H/node2.log" 2>&1
  for i in $(seq 1 600); do
    [ -z "$("$bindir/psql" -X -At -h 127.0.0.1 -p "$p1" -U postgres -c 'SHOW synchronous_standby_names')" ] && break
    [ "$i" = 600 ] && die "the primary still replicates synchronously after 60 s"
    sleep 0.1
  done
fi
echo "replication: $mode; synchronous_standby_names on the primary:" \
  "'$("$bindir/psql" -X -At -h 127.0.0.1 -p "$p1" -U postgres -c 'SHOW synchronous_standby_names')'"

"$PY_PYTHON" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$ROOT/clients/python" >/dev/null
export HA_KILL="bash $ROOT/tests/cluster/ha.sh --kill-node node1"
# The restarted node is recorded as the first start was, so the cleanup ends it the same way.
export HA_RESTART="bash $ROOT/tests/cluster/ha.sh --start-node node1"
export HA_MONITOR="host=127.0.0.1 port=$pm user=postgres dbname=pg_auto_failover"
"$PY_PYTHON" "$ROOT/tests/cluster/ha.py" "$mode" \
  "host=127.0.0.1,127.0.0.1 port=$p1,$p2 user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2" \
  "host=127.0.0.1 port=$p1 user=postgres dbname=postgres connect_timeout=2" \
  "host=127.0.0.1 port=$p2 user=postgres dbname=postgres connect_timeout=2"
