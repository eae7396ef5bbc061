#!/usr/bin/env bash
# The Elixir client (clients/elixir) against a running cluster: a fresh database with the
# evolution topology and contracts, a role that must log in with SCRAM-SHA-256 (the pg_hba
# line for it goes first), then `mix test` (offline: no Hex packages, the driver and JSON codec
# are Debian's). Usage: elixir.sh BINDIR PORT DATADIR [mix test args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
bindir=$1 port=$2 datadir=$3; shift 3  # the rest goes to mix test
db=pgflow_elixir
psql_() { "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }

psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
psql_ -d "$db" -c 'CREATE EXTENSION IF NOT EXISTS pgflow' \
  -f "$ROOT/examples/evolution/topology.sql" -f "$ROOT/examples/evolution/contracts.sql" >/dev/null
psql_ -d postgres <<'SQL'
DROP ROLE IF EXISTS pgflow_elixir;
SET password_encryption = 'scram-sha-256';
-- A superuser only because the tests also read pg_authid and drop queues; the client needs
-- nothing beyond what the pgflow functions need.
CREATE ROLE pgflow_elixir LOGIN SUPERUSER PASSWORD 'elixir-Sécret';
SQL
hba=$datadir/pg_hba.conf
if ! as_postgres grep -q '^host all pgflow_elixir' "$hba"; then
  as_postgres sh -c "{ echo 'host all pgflow_elixir 127.0.0.1/32 scram-sha-256'; cat '$hba'; } > '$hba.new' && mv '$hba.new' '$hba'"
  psql_ -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
fi

# mix wants a writable HOME and MIX_HOME; keep them (and the build) out of the user's home.
work=$ROOT/target/elixir
mkdir -p "$work/home" "$work/mix"
cd "$ROOT/clients/elixir"
# One build per cluster (make test runs versions side by side, each with its own data directory).
HOME=$work/home MIX_HOME=$work/mix MIX_BUILD_PATH="$work/build-$(basename "$datadir")" MIX_ENV=test \
PGFLOW_TEST_DSN="host=127.0.0.1 port=$port user=postgres dbname=$db" \
PGFLOW_TEST_SCRAM_DSN="host=127.0.0.1 port=$port user=pgflow_elixir password=elixir-Sécret dbname=$db" \
  mix test "$@" 2>&1
