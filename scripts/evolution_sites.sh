#!/usr/bin/env bash
# The evolution system across sites (issue #29): two Singularity instances and CentralCloud on
# three Postgres clusters of VERSION, each with its own pgflow and the queues and contracts of
# examples/evolution/ (topology.sql, contracts.sql), wired by links (logical replication).
# examples/evolution/sites.py runs the services, kills CentralCloud's postmaster mid-scenario
# and brings it back, and reports every hop and each link's backlog over time. Used by the demo
# (README command 1) and by the evolution test layer.
# Usage: evolution_sites.sh VERSION
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
ex=$ROOT/examples/evolution
base=/tmp/pgflow-sites-$ver
sites=(singularity_1 singularity_2 centralcloud)
cleanup() { for s in "${sites[@]}"; do cluster_stop "$ver" "$base-$s"; done; }
trap cleanup EXIT
args=()
for s in "${sites[@]}"; do
  port=$(free_port)
  cluster_start "$ver" "$base-$s" "$port" "wal_level = logical" "max_worker_processes = 16" \
    "max_replication_slots = 10" "max_wal_senders = 10" "wal_retrieve_retry_interval = '1s'"
  "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c 'CREATE EXTENSION pgflow' -f "$ex/topology.sql" -f "$ex/contracts.sql" >/dev/null
  args+=("$s=$port=$base-$s")
done
"$PY_PYTHON" -u "$ex/sites.py" "$bindir" "${args[@]}"
