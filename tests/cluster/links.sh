#!/usr/bin/env bash
# The links layer (issue #29): sites on separate clusters on loopback, wired by pgflow links
# (logical replication, sql/links.sql). Three clusters of VERSION: site a and site b (two
# evolution instances) and site c (CentralCloud), each with wal_level = logical and its own
# pgflow and worker. tests/cluster/links.py sets the links up as docs/operations.md says and
# checks exactly once and order through kills and an outage, the refusals, and the roles.
# Usage: links.sh VERSION
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
base=/tmp/pgflow-links-$ver
cleanup() { for s in a b c; do cluster_stop "$ver" "$base-$s"; done; }
trap cleanup EXIT
args=()
# Site a serves the endpoint and the status page (per-link series and rows).
LINKS_METRICS_PORT=$(free_port)
export LINKS_METRICS_PORT
for s in a b c; do
  port=$(free_port)
  extra=()
  [ "$s" = a ] && extra=("pgflow.metrics_listen = '127.0.0.1:$LINKS_METRICS_PORT'")
  # The worker's tick at its default; fsync off: a crash test kills postmasters, not the OS. A
  # subscription retries its connection every second (default 5 s), for a shorter suite.
  cluster_start "$ver" "$base-$s" "$port" "wal_level = logical" "fsync = off" \
    "max_worker_processes = 16" "max_replication_slots = 10" "max_wal_senders = 10" \
    "wal_retrieve_retry_interval = '1s'" "${extra[@]}"
  as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION pgflow'
  args+=("$s=$port=$base-$s")
done
"$PY_PYTHON" -u "$ROOT/tests/cluster/links.py" "$bindir" "$ver" "${args[@]}"
