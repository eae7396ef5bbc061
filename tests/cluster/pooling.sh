#!/usr/bin/env bash
# The clients' runtimes through PgBouncer in transaction mode (Debian's pgbouncer), in front of
# the layer's cluster: the Python, Rust and Elixir consumers long-poll, heartbeat, nack and
# archive through it, their plain calls prepare nothing the next server connection would miss,
# and a queue with session leases is refused. The pool (4 server connections per database) is
# smaller than the connections the tests open, so transactions really do move between server
# connections. Usage: pooling.sh VERSION PORT DATADIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
ver=$1 port=$2 datadir=$3
bindir=$("$(pg_config_for "$ver")" --bindir)
dir=/tmp/pgflow-pgbouncer-$ver
pb=$(free_port)
pgbouncer_start "$dir" "$pb" "$port" 4
trap 'pgbouncer_stop "$dir"' EXIT
direct="host=127.0.0.1 port=$port user=postgres"
pooled="host=127.0.0.1 port=$pb user=postgres"
failed=0
"$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
  -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION IF NOT EXISTS pgflow'

say "pooling: Python (pytest tests/test_pooling.py)"
PGFLOW_POOLED_DSN="$pooled dbname=postgres" \
  bash "$ROOT/tests/clients/python.sh" "$direct dbname=postgres" test_pooling.py || failed=1

say "pooling: Rust (cargo test --test pooling -- --ignored)"
PGFLOW_TEST_DSN="$direct dbname=postgres" PGFLOW_POOLED_DSN="$pooled dbname=postgres" \
  cargo test -q -p pgflow-client --test pooling -- --ignored || failed=1

say "pooling: Elixir (mix test --only pooling)"
PGFLOW_POOLED_DSN="$pooled dbname=pgflow_elixir" \
  bash "$ROOT/tests/clients/elixir.sh" "$bindir" "$port" "$datadir" --only pooling || failed=1

# The pooler ran in transaction mode and served the tests' transactions.
pools=$("$bindir/psql" -X -At -h 127.0.0.1 -p "$pb" -U postgres -d pgbouncer -c 'SHOW POOLS' \
  | awk -F'|' '$1 != "pgbouncer" {print $1 ":" $NF}' | sort -u)
stats=$("$bindir/psql" -X -At -h 127.0.0.1 -p "$pb" -U postgres -d pgbouncer -c 'SHOW STATS' \
  | awk -F'|' '$1 != "pgbouncer" {x += $2} END {print x + 0}')
echo "pools: $(echo $pools); transactions served: $stats"
if grep -qv ':transaction$' <<<"$pools" || [ "$stats" -lt 100 ]; then
  echo "the pooler was not in transaction mode, or served too few transactions" >&2
  failed=1
fi
[ "$failed" = 0 ] && echo "pooling: all passed"
exit "$failed"
