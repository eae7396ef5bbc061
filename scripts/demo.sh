#!/usr/bin/env bash
# README command 1 (`make demo`): build pgflow, start a throwaway Postgres (15 by default;
# PG=16, 17 or 18 for the others) with pgflow preloaded, and run the evolution system's scenario
# (examples/evolution/: every hop, the DLQ and a redrive, a broadcast, 4 parallel Genesis
# workers) through psql; then the same system across three sites (scripts/evolution_sites.sh:
# three more throwaway clusters, stopped when it ends).
# The cluster stays up afterwards; `make demo-stop` stops it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ver=${PG:-15}
dir=/tmp/pgflow-demo-$ver
port=${PGFLOW_DEMO_PORT:-$((54300 + ver))}
bindir=""

if [ "${1:-}" = stop ]; then
  for v in $PG_MAJORS; do
    [ -f "/tmp/pgflow-demo-$v/postmaster.pid" ] && { cluster_stop "$v" "/tmp/pgflow-demo-$v"; say "stopped the Postgres $v demo cluster"; }
  done
  exit 0
fi

"$ROOT/scripts/setup.sh" demo "$ver"
bindir=$("$(pg_config_for "$ver")" --bindir)
say "building and installing pgflow (release) into Postgres $ver"
install_pgflow "$ver" --release
say "starting a throwaway Postgres $ver cluster in $dir on port $port"
cluster_start "$ver" "$dir" "$port"
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres pgflow_demo

say "running the evolution system scenario (examples/evolution/)"
bash "$ROOT/scripts/evolution.sh" "$bindir" "$port" pgflow_demo

say "the same system across sites: two instances and CentralCloud on three clusters of their own, wired by links; CentralCloud killed mid-scenario"
bash "$ROOT/scripts/evolution_sites.sh" "$ver"

cat <<EOT

The demo cluster is still running (Postgres $ver, data in $dir).
  connect:  $bindir/psql -h 127.0.0.1 -p $port -U postgres pgflow_demo
  stop:     make demo-stop
  more:     psql ... -f examples/demo.sql            (a tour of the API, with real 1/2/4 s backoff)
            psql ... -f examples/psql/queues.sql     (operator views; also dlq, redrive, purge)
EOT
