#!/usr/bin/env bash
# A network cut between two sites (issue #29): site a runs in a network namespace of its own,
# reached from site b over a veth pair (10.203.VERSION.0/24), so that a cut is a real one: the
# root side of the pair is set down, and the packets of the established replication connection
# go nowhere, with no reset and no error to either end (unlike a kill or a stopped server). Site
# a is driven over its Unix socket, which a network namespace does not cut. A producer keeps
# sending at site a through the cut; tests/cluster/links_cut.py checks that the sends stay
# local and are acknowledged, that both ends notice (wal_sender_timeout and
# wal_receiver_timeout, 5 s here), that links() says so with the backlog, and that after the
# network comes back every acknowledged send arrives at b exactly once, in send order.
# Needs CAP_NET_ADMIN (ip netns); without it the layer says so and checks nothing.
# Usage: links_cut.sh VERSION
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/lib.sh"
ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
base=/tmp/pgflow-cut-$ver
ns=pgflow-cut-$ver
va=pfcut${ver}a vb=pfcut${ver}b
net=10.203.$ver
if ! unshare -n true 2>/dev/null || ! command -v ip >/dev/null; then
  echo "NOT RUN: this machine cannot make network namespaces (CAP_NET_ADMIN and iproute2 are needed); the network cut is not checked here"
  exit 0
fi
cleanup() {
  for s in a b; do cluster_stop "$ver" "$base-$s"; done
  ip link del "$va" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$ns"
ip link add "$va" type veth peer name "$vb"
ip link set "$vb" netns "$ns"
ip addr add "$net.1/24" dev "$va"
ip link set "$va" up
ip netns exec "$ns" ip addr add "$net.2/24" dev "$vb"
ip netns exec "$ns" ip link set "$vb" up
ip netns exec "$ns" ip link set lo up

settings=("wal_level = logical" "fsync = off" "max_worker_processes = 16" "max_replication_slots = 10"
  "max_wal_senders = 10" "wal_retrieve_retry_interval = '1s'" "wal_sender_timeout = '5s'"
  "wal_receiver_timeout = '5s'")
port_a=$(free_port)
cluster_start "$ver" "$base-a" "$port_a" "${settings[@]}"
# Site a again, inside the namespace, listening on its side of the pair only.
as_postgres "$bindir/pg_ctl" -D "$base-a" -m fast -w stop >/dev/null
echo "listen_addresses = '$net.2'" | as_postgres tee -a "$base-a/postgresql.conf" >/dev/null
printf 'host all all %s.0/24 trust\nhost replication all %s.0/24 trust\n' "$net" "$net" \
  | as_postgres tee -a "$base-a/pg_hba.conf" >/dev/null
ip netns exec "$ns" sudo -u postgres -- "$bindir/pg_ctl" -D "$base-a" -l "$base-a/server.log" -w -t 60 start >/dev/null \
  || { cat "$base-a/server.log" >&2; die "site a did not start in its namespace"; }
port_b=$(free_port)
cluster_start "$ver" "$base-b" "$port_b" "${settings[@]}"
for s in a b; do
  p=$port_a; [ "$s" = b ] && p=$port_b
  as_postgres "$bindir/psql" -X -q -h "$base-$s" -p "$p" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c 'CREATE EXTENSION pgflow'
done
"$PY_PYTHON" -u "$ROOT/tests/cluster/links_cut.py" "$ver" "$base-a" "$port_a" "$net.2" \
  "$base-b" "$port_b" "$va"
