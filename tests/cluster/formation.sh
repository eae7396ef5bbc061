# A pg_auto_failover formation on loopback, Postgres 15 (Debian's postgresql-15-auto-failover):
# a monitor, a primary (node1) and a secondary (node2) with synchronous replication, pgflow
# preloaded on both nodes and created on the primary. Sourced by ha.sh and ha_links.sh, with H
# (the formation's directory) set; defines bindir, the ports pm, p1 and p2, and:
#   formation_up [CONF_LINE...]   the monitor, node1 (its postgresql.conf gets the lines too),
#                                 CREATE EXTENSION pgflow on node1, node2, both in sync
#   start_node NAME / stop_node NAME   pg_autoctl run of a node in a session of its own / kill -9
#                                 of that process group (the cleanup's)
#   kill_node NAME                the node dies as when its machine does (frozen, then killed:
#                                 pg_autoctl, the postmaster and every Postgres child)
#   state NAME / wait_state NAME STATE [SECONDS]   a node's state as the monitor has it
#   cleanup                       every process of the formation
# The monitor's health checks are shortened (1 s period, 5 s to unhealthy, 3 s to consider an
# unreachable primary demoted) so that a failover takes seconds, yet a busy machine's stall does
# not fail over early; docs/operations.md gives the defaults and what shortening them costs.
: "${H:?formation.sh needs H}"
bindir=$("$(pg_config_for 15)" --bindir)
pm=$(free_port) p1=$(free_port) p2=$(free_port)
env_=(env "XDG_CONFIG_HOME=$H/config" "XDG_DATA_HOME=$H/data" "XDG_RUNTIME_DIR=$H/run" "PG_CONFIG=$bindir/pg_config")
autoctl() { as_postgres "${env_[@]}" pg_autoctl "$@"; }

stop_node() {  # the whole process group of a node's pg_autoctl, at once
  local pgid_file=$H/$1.pgid
  if [ -f "$pgid_file" ]; then kill -9 -- "-$(cat "$pgid_file")" 2>/dev/null || true; rm -f "$pgid_file"; fi
}
start_node() {  # pg_autoctl run in a session of its own, so that stop_node kills all of it
  as_postgres "${env_[@]}" setsid pg_autoctl run --pgdata "$H/$1" >>"$H/$1.log" 2>&1 &
  local pid=""
  for _ in $(seq 1 100); do
    pid=$(pgrep -f "^pg_autoctl run --pgdata $H/$1\$" || true)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || die "pg_autoctl did not start for $1"
  ps -o pgid= -p "$pid" | tr -d ' ' > "$H/$1.pgid"
}
kill_node() {  # a node dies as when its machine does: everything of it stops at once
  # Its pg_autoctl's process group holds the postmaster, but every Postgres child leads a
  # process group of its own (InitPostmasterChild calls setsid), so a group kill leaves the
  # children running for a moment: a backend or an apply worker waiting for the synchronous
  # standby then sees the postmaster die, gives up the wait, finishes its commit locally, and an
  # apply worker even reports it to its publisher. A machine's death allows none of that: the
  # node's Postgres processes are frozen first (the postmaster, then its children), then all is
  # killed. (Only Postgres is frozen: a stopped pg_autoctl makes the sudo that started it stop
  # too, which then never reaps it, and the next pg_autoctl finds its pid alive.)
  local pgid pm kids
  pgid=$(cat "$H/$1.pgid")
  pm=$(head -1 "$H/$1/postmaster.pid" 2>/dev/null || true)
  [ -n "$pm" ] && kill -STOP "$pm" 2>/dev/null || true
  kids=$([ -n "$pm" ] && pgrep -P "$pm" || true)
  # shellcheck disable=SC2086
  [ -n "$kids" ] && kill -STOP $kids 2>/dev/null || true
  # shellcheck disable=SC2086
  kill -9 -- "-$pgid" $pm $kids 2>/dev/null || true
  rm -f "$H/$1.pgid"
}
cleanup() {
  for n in node1 node2 monitor; do stop_node $n; done
  # Postgres servers of this formation's directories that outlived their pg_autoctl.
  pkill -9 -f "postgres -D $H/" 2>/dev/null || true
  sleep 0.5
  for n in node1 node2 monitor; do
    if [ -f "$H/$n/postmaster.pid" ]; then
      as_postgres "$bindir/pg_ctl" -D "$H/$n" -m immediate stop >/dev/null 2>&1 || true
    fi
  done
  return 0
}
state() {  # node name -> its reported state, from the monitor
  "$bindir/psql" -X -At -h 127.0.0.1 -p "$pm" -U postgres -d pg_auto_failover \
    -c "SELECT reportedstate FROM pgautofailover.node WHERE nodename = '$1'" 2>/dev/null || true
}
wait_state() {  # node state [seconds]
  for _ in $(seq 1 $((${3:-120} * 10))); do [ "$(state "$1")" = "$2" ] && return 0; sleep 0.1; done
  echo "node $1 never reached $2 (now: $(state "$1"))" >&2; tail -20 "$H/$1.log" >&2; return 1
}

formation_up() {
  local tag; tag=$(basename "$H")
  cleanup
  as_postgres rm -rf "$H" 2>/dev/null || rm -rf "$H"
  mkdir -p "$H" && chown postgres "$H"
  local monitor_uri="postgres://autoctl_node@127.0.0.1:$pm/pg_auto_failover?sslmode=disable"
  say "$tag: monitor"
  autoctl create monitor --pgdata "$H/monitor" --pgport "$pm" --hostname 127.0.0.1 --auth trust \
    --no-ssl --pgctl "$bindir/pg_ctl" >"$H/monitor.log" 2>&1
  start_node monitor
  for _ in $(seq 1 100); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pm" && break; sleep 0.1; done
  "$bindir/psql" -X -q -h 127.0.0.1 -p "$pm" -U postgres -d pg_auto_failover \
    -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_timeout = 2000" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" \
    -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 5000" \
    -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 3000" \
    -c "SELECT pg_reload_conf()" >/dev/null

  say "$tag: primary (node1)"
  # The primary's data directory is made here, with pgflow preloaded; the secondary copies it.
  as_postgres "$bindir/initdb" -D "$H/node1" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  { printf "shared_preload_libraries = 'pgflow'\nmax_connections = 100\npgflow.tick_ms = 200\n"
    local line; for line in "$@"; do echo "$line"; done; } \
    | as_postgres tee -a "$H/node1/postgresql.conf" >/dev/null
  autoctl create postgres --pgdata "$H/node1" --pgport "$p1" --hostname 127.0.0.1 --name node1 \
    --monitor "$monitor_uri" --auth trust --no-ssl --pgctl "$bindir/pg_ctl" >>"$H/node1.log" 2>&1
  start_node node1
  wait_state node1 single 60
  for _ in $(seq 1 300); do "$bindir/pg_isready" -q -h 127.0.0.1 -p "$p1" && break; sleep 0.1; done
  "$bindir/psql" -X -q -h 127.0.0.1 -p "$p1" -U postgres -c 'CREATE EXTENSION pgflow'

  say "$tag: secondary (node2)"
  autoctl create postgres --pgdata "$H/node2" --pgport "$p2" --hostname 127.0.0.1 --name node2 \
    --monitor "$monitor_uri" --auth trust --no-ssl --pgctl "$bindir/pg_ctl" >>"$H/node2.log" 2>&1
  start_node node2
  wait_state node2 secondary 120
  wait_state node1 primary 60
}
