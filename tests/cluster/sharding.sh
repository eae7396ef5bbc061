#!/usr/bin/env bash
# Sharding with PL/Proxy (Debian's postgresql-15-plproxy), Postgres 15: two pgflow servers
# (each with its own workers) and a router server, on loopback; the router is set up exactly as
# examples/sharding/router.sql says, then tests/cluster/sharding.py checks the recipe and its
# consumer (examples/sharding/consumer.py) over real connections.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
ver=15
bindir=$("$(pg_config_for "$ver")" --bindir)
base=/tmp/pgflow-shard
ports=() dsns=()
cleanup() {
  cluster_stop "$ver" "$base-router"
  for i in 0 1; do cluster_stop "$ver" "$base-$i"; done
}
trap cleanup EXIT
for i in 0 1; do
  ports[$i]=$(free_port)
  cluster_start "$ver" "$base-$i" "${ports[$i]}" "fsync = off"
  "$bindir/psql" -X -q -h 127.0.0.1 -p "${ports[$i]}" -U postgres -d postgres -c 'CREATE EXTENSION pgflow'
  dsns[$i]="host=127.0.0.1 port=${ports[$i]} user=postgres dbname=postgres"
done
rport=$(free_port)
# The router needs no pgflow (nor its preload).
cluster_start "$ver" "$base-router" "$rport" "fsync = off" "shared_preload_libraries = ''"
"$bindir/psql" -X -q -h 127.0.0.1 -p "$rport" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION plproxy;
CREATE SERVER pgflow_shards FOREIGN DATA WRAPPER plproxy
    OPTIONS (partition_0 '${dsns[0]}', partition_1 '${dsns[1]}');
CREATE USER MAPPING FOR PUBLIC SERVER pgflow_shards;
\i $ROOT/examples/sharding/router.sql
SQL
# The Python client, installed into the layer's venv as a user installs it.
"$PY_PYTHON" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$ROOT/clients/python" >/dev/null
"$PY_PYTHON" "$ROOT/tests/cluster/sharding.py" "host=127.0.0.1 port=$rport user=postgres dbname=postgres" \
  "${dsns[0]}" "${dsns[1]}"
