#!/usr/bin/env bash
# The evolution scenario (examples/evolution/) against a running server with pgflow:
# topology, contracts and roles, every hop of scenario.sql, 4 Genesis workers in parallel, and the
# report with its checks. Used by the demo (README command 1) and by the test suite.
# Usage: evolution.sh BINDIR PORT DBNAME   (the database must exist; the extension is created)
# PGFLOW_HOST (default 127.0.0.1) and PGFLOW_USER (default postgres) pick the server and role;
# docker/docker-compose.yml uses them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bindir=$1 port=$2 db=$3
ex=$ROOT/examples/evolution
host=${PGFLOW_HOST:-127.0.0.1} user=${PGFLOW_USER:-postgres}
psql_() { "$bindir/psql" -X -h "$host" -p "$port" -U "$user" -d "$db" -v ON_ERROR_STOP=1 "$@"; }

psql_ -q -c 'CREATE EXTENSION IF NOT EXISTS pgflow' >/dev/null
psql_ -q -f "$ex/topology.sql" >/dev/null
psql_ -q -f "$ex/contracts.sql" >/dev/null
psql_ -q -f "$ex/roles.sql" >/dev/null
psql_ -f "$ex/scenario.sql"

pids=()
for w in 1 2 3 4; do
  psql_ -q -v worker="$w" -f "$ex/genesis_worker.sql" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

psql_ -f "$ex/report.sql"
