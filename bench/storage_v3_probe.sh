#!/usr/bin/env bash
# Storage v3's groundwork (issue #31): bench/storage_v3_probe.py on a cluster of each Postgres
# given (default 15 and 18: the planner locks partitions differently before 18). No pgflow
# needed. Writes bench/results/<UTC>-storage-v3-probe.md (SMOKE=1: small sizes, to stdout only).
# Usage: bash bench/storage_v3_probe.sh [15 16 17 18]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
vers=${*:-15 18}
py=/opt/pgflow/python/bin/python
[ -x "$py" ] || { bash "$ROOT/scripts/setup.sh" python >&2; }
if [ "${SMOKE:-}" = 1 ]; then
  args=(--queues 1,50 --rows-per-queue 20 --calls 200 --big 20000) out=/dev/null
else
  args=() out=$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-storage-v3-probe.md
fi
for ver in $vers; do
  dir=/tmp/pgflow-v3probe-$ver
  port=$(free_port)
  trap 'cluster_stop "$ver" "$dir"' EXIT
  cluster_start "$ver" "$dir" "$port" "shared_buffers = '512MB'" "max_wal_size = '4GB'" \
    "max_locks_per_transaction = 2048"
  "$py" "$ROOT/bench/storage_v3_probe.py" "host=127.0.0.1 port=$port user=postgres dbname=postgres" \
    "${args[@]}" | tee -a "$out"
  echo | tee -a "$out"
  cluster_stop "$ver" "$dir"
  trap - EXIT
done
[ "$out" = /dev/null ] || say "wrote $out"
