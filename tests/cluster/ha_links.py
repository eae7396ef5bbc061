"""A failover of the receiving site under pg_auto_failover (issue #29; tests/cluster/ha_links.sh
starts site a and the formation of site c). Every wait is bounded and polls the servers' own
state."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
from sites import DSN, Producer, check, exactly_once, filled, link_state, log, q, q1, resent, until

PORT_A, PORT_C1, PORT_C2 = sys.argv[1:4]
DSN["a"] = f"host=127.0.0.1 port={PORT_A} user=postgres dbname=postgres connect_timeout=5"
# Site c as its clients reach it: both nodes, the one that accepts writes.
DSN["c"] = (f"host=127.0.0.1,127.0.0.1 port={PORT_C1},{PORT_C2} user=postgres dbname=postgres "
            "target_session_attrs=read-write connect_timeout=2")
DSN["node1"] = f"host=127.0.0.1 port={PORT_C1} user=postgres dbname=postgres connect_timeout=2"
DSN["node2"] = f"host=127.0.0.1 port={PORT_C2} user=postgres dbname=postgres connect_timeout=2"


def node_state(name: str) -> str | None:
    with psycopg.connect(os.environ["HAL_MONITOR"], autocommit=True) as c:
        row = c.execute("SELECT reportedstate FROM pgautofailover.node WHERE nodename = %s",
                        (name,)).fetchone()
        return row[0] if row else None


# --- Set-up, as docs/operations.md says ------------------------------------------------------
q("a", "SELECT pgflow.set_site('a')")
q("c", "SELECT pgflow.set_site('c')")
q("a", "GRANT CREATE ON DATABASE postgres TO pgflow_owner")
q("a", "SELECT pgflow.create_queue('out')")
q("c", "SELECT pgflow.create_queue('in')")
stmt = q1("a", "SELECT pgflow.link_create('c', 'c')")
# At a remote with a standby: the apply commits wait for it, so that the remote never confirms
# to site a what its standby lacks (a subscription applies with synchronous_commit off by
# default and confirms what it flushed locally).
sub = filled(stmt, "127.0.0.1", PORT_A, options="synchronous_commit = 'on'")
check("the statement was filled in", "..." not in sub and "synchronous_commit = 'on'" in sub, sub)
q("node1", sub)
until("the link is connected", lambda: link_state("a", "c")["state"] == "connected",
      detail=lambda: link_state("a", "c"))
q("a", "SELECT pgflow.forward('out', 'c', 'in')")
until("node2 has the subscription (replicated from node1)",
      lambda: q1("node2", "SELECT count(*) FROM pg_subscription WHERE subname LIKE 'pgflow\\_from\\_a\\_%%'") == 1)

# --- A producer at site a through c's failover -------------------------------------------------
producer = Producer(lambda: DSN["a"], "out", 0.003)
acked = producer.acked
until("sends flow to c", lambda: len(q("node1", "SELECT 1 FROM pgflow.message LIMIT 400")) >= 400)
check("node1 is still the primary when it is killed", node_state("node1") == "primary", node_state("node1"))
subprocess.run(["bash", "-c", os.environ["HAL_KILL"]], check=True)
before = len(acked)
log(f"node1 killed (-9, its whole node) after {before} acknowledged sends at a")
until("the monitor promotes node2", lambda: node_state("node2") in ("wait_primary", "primary"),
      seconds=90, detail=lambda: node_state("node2"))
until("the link is connected again (c's subscription on node2)",
      lambda: link_state("a", "c")["state"] == "connected"
      and q1("node2", "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL") == 1,
      detail=lambda: link_state("a", "c"))
until("the producer goes on", lambda: len(acked) >= before + 600, seconds=60)
producer.stop()
check("c's clients reach node2", q1("c", "SELECT inet_server_port()") == int(PORT_C2))
exactly_once("c's failover", "c", "in", "a", acked, seconds=120)
check("nothing was sent again (no pgflow_resent)", resent("c", "in") == 0)
until("a's outbox drains", lambda: link_state("a", "c")["backlog"] == 0, detail=lambda: link_state("a", "c"))
log(f"ha_links: {len(acked)} acknowledged sends ({before} before node1 died) delivered once, "
    f"in order, through the failover of the receiving site")
