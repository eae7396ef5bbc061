"""A failover of the sending site with failover slots (issue #29, Postgres 17 and later;
tests/cluster/links_failover.sh starts site a, its standby a2 and site c). Every wait is bounded
and polls the servers' own state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import psycopg
import sites
from sites import DSN, Producer, check, dsn, filled, log, q, q1, until

BINDIR, DIR_A, PORT_A, DIR_A2, PORT_A2, PORT_C = sys.argv[1:7]
for name, port in (("a", PORT_A), ("a2", PORT_A2), ("c", PORT_C)):
    DSN[name] = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"


def link_state(site: str) -> dict[str, Any]:
    return sites.link_state(site, "c")


# --- Set-up -----------------------------------------------------------------------------------
for s in ("a", "c"):
    q(s, "SELECT pgflow.set_site(%s)", s)
q("a", "GRANT CREATE ON DATABASE postgres TO pgflow_owner")
q("a", "SELECT pgflow.create_queue('out')")
q("c", "SELECT pgflow.create_queue('in')")
stmt = q1("a", "SELECT pgflow.link_create('c', 'c', failover => true)")
check("link_create's statement asks for a failover slot", "failover = true" in stmt, stmt)
# Both hosts of site a; only the one that accepts writes serves the subscription.
q("c", filled(stmt, "127.0.0.1,127.0.0.1", f"{PORT_A},{PORT_A2}",
              user="user=postgres target_session_attrs=read-write"))
until("the link is connected", lambda: link_state("a")["state"] == "connected", detail=lambda: link_state("a"))
q("a", "SELECT pgflow.forward('out', 'c', 'in')")
check("the link's slot at site a is a failover slot",
      q1("a", "SELECT failover FROM pg_replication_slots WHERE slot_name LIKE 'pgflow\\_link\\_%%'") is True)

# --- A producer through the failover ---------------------------------------------------------
on = {"site": "a"}
producer = Producer(lambda: dsn(on["site"]), "out", 0.005)
acked = producer.acked
until("sends flow to c", lambda: q1("c", "SELECT count(*) FROM pgflow.message") >= 300)
# A synced slot is usable after a promotion once it is persistent: the standby keeps it
# temporary until the primary's slot has moved past what the standby can guarantee (its
# catalog xmin), which the stream's progress brings.
until("the standby has the link's slot, synced and persistent",
      lambda: q1("a2", "SELECT synced AND NOT temporary FROM pg_replication_slots "
                       "WHERE slot_name LIKE 'pgflow\\_link\\_%%'") is True,
      detail=lambda: q("a2", "SELECT slot_name, synced, temporary, failover, confirmed_flush_lsn "
                             "FROM pg_replication_slots"))
with open(f"{DIR_A}/postmaster.pid") as f:
    pid_a = int(f.readline())
os.kill(pid_a, signal.SIGKILL)
before = len(acked)
log(f"site a killed (-9) after {before} acknowledged sends")
subprocess.run(["sudo", "-u", "postgres", "--", f"{BINDIR}/pg_ctl", "-D", DIR_A2, "-w", "promote"],
               check=True, stdout=subprocess.DEVNULL)
on["site"] = "a2"
until("the producer sends at a2", lambda: len(acked) >= before + 300, seconds=60)
producer.stop()
after = acked[before:]
check("a2's ids are past a's (the timeline's jump)", min(after) > max(acked[:before]))
until("c goes on from a2 by itself (the link connected there)",
      lambda: link_state("a2")["state"] == "connected", detail=lambda: link_state("a2"))


def arrived() -> list[tuple[int, bool]]:
    return [(int(r[0]), bool(r[1])) for r in q(
        "c", "SELECT m.headers -> 'pgflow_origin' ->> 'id', m.headers ? 'pgflow_resent' FROM pgflow.message m "
             "JOIN pgflow.queue u USING (queue_id) WHERE u.queue_name = 'in' ORDER BY m.msg_id")]


until("every acknowledged send, of a and of a2, arrives at c",
      lambda: {i for i, _ in arrived()} >= set(acked),
      detail=lambda: {"missing": sorted(set(acked) - {i for i, _ in arrived()})[:10], "a2": link_state("a2")})
got = arrived()
ids = [i for i, _ in got]
check("none arrived twice", len(ids) == len(set(ids)), len(ids) - len(set(ids)))
check("nothing was sent again (no pgflow_resent)", not any(r for _, r in got))
check("in send order", ids == sorted(ids))
extra = set(ids) - set(acked)
check("at most the one send in flight when a died arrived unacknowledged", len(extra) <= 1, sorted(extra))
until("a2's outbox drains", lambda: link_state("a2")["backlog"] == 0, detail=lambda: link_state("a2"))
log(f"links_failover: {len(acked)} acknowledged sends ({before} at a, {len(acked) - before} at a2) "
    f"delivered once, in order, through the failover")
