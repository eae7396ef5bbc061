"""A network cut between two sites (issue #29; tests/cluster/links_cut.sh sets it up): site a in
a network namespace of its own, site b outside, a link a -> b over a veth pair. A producer sends
at site a all along; the root side of the pair goes down mid-stream and comes back later. Every
wait is bounded and polls the servers' own state."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
from sites import DSN, check, filled, link_state, log, q, q1, until

VER, DIR_A, PORT_A, ADDR_A, DIR_B, PORT_B, VETH = sys.argv[1:8]
# Site a over its Unix socket (a network namespace does not cut it), site b over loopback.
DSN.update({"a": f"host={DIR_A} port={PORT_A} user=postgres dbname=postgres",
            "b": f"host=127.0.0.1 port={PORT_B} user=postgres dbname=postgres connect_timeout=5"})
# How long the cut lasts once both ends have noticed it.
HOLD = 20


def state() -> dict[str, Any]:
    return link_state("a", "b")


def apply_pid() -> Any:
    return q1("b", "SELECT pid FROM pg_stat_subscription WHERE subname LIKE 'pgflow\\_from\\_a\\_%%' AND relid IS NULL")


def link(up: bool) -> None:
    subprocess.run(["ip", "link", "set", VETH, "up" if up else "down"], check=True)


# --- Set-up, as docs/operations.md says ------------------------------------------------------
for s in ("a", "b"):
    q(s, "SELECT pgflow.set_site(%s)", s)
    q(s, "GRANT CREATE ON DATABASE postgres TO pgflow_owner")
q("a", "SELECT pgflow.create_queue('out')")
q("b", "SELECT pgflow.create_queue('in')")
stmt = q1("a", "SELECT pgflow.link_create('b', 'b', alert_age => '3 s')")
q("b", filled(stmt, ADDR_A, PORT_A))
until("the link is connected over the pair", lambda: state()["state"] == "connected", detail=state)
q("a", "SELECT pgflow.forward('out', 'b', 'in')")

# --- A producer through the cut ---------------------------------------------------------------
acked: list[int] = []
stop = threading.Event()
errors: list[str] = []


def produce() -> None:
    try:
        with psycopg.connect(DSN["a"], autocommit=True) as c:
            n = 0
            while not stop.is_set():
                acked.append(c.execute("SELECT pgflow.send('out', jsonb_build_object('n', %s::int))",
                                       (n,)).fetchone()[0])  # type: ignore[index]
                n += 1
                time.sleep(0.005)
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


producer = threading.Thread(target=produce, daemon=True)
producer.start()
until("sends flow to b before the cut", lambda: q1("b", "SELECT count(*) FROM pgflow.message") >= 200)
before_pid = apply_pid()
link(False)
cut_at = len(acked)
log(f"cut after {cut_at} acknowledged sends")
try:
    # Neither end gets an error or a reset: each notices by its own timeout (5 s here).
    until("site a's walsender gives the connection up (links() says disconnected)",
          lambda: state()["state"] == "disconnected", seconds=60, detail=state)
    until("site b's apply worker gives the connection up",
          lambda: apply_pid() != before_pid, seconds=60,
          detail=lambda: q("b", "SELECT * FROM pg_stat_subscription"))
    noticed = len(acked)
    time.sleep(HOLD)
    st = state()
    check("sends stay local and acknowledged during the cut", len(acked) > noticed + 100,
          f"{len(acked) - noticed} in {HOLD} s")
    check("links() shows the backlog and its age during the cut",
          st["backlog"] > 0 and st["oldest_age"] > 3 and st["alerting"] is True, st)
    check("the producer saw no error", not errors, errors)
finally:
    link(True)
log(f"network back after {len(acked) - cut_at} more sends")
until("the link is connected again", lambda: state()["state"] == "connected", seconds=120, detail=state)
time.sleep(2)
stop.set()
producer.join()
check("the producer saw no error", not errors, errors)


def arrived() -> list[int]:
    return [int(r[0]) for r in q("b", "SELECT m.headers -> 'pgflow_origin' ->> 'id' FROM pgflow.message m "
                                      "JOIN pgflow.queue u USING (queue_id) WHERE u.queue_name = 'in' "
                                      "ORDER BY m.msg_id")]


until("every acknowledged send arrives at b", lambda: set(arrived()) >= set(acked),
      detail=lambda: {"missing": len(set(acked) - set(arrived())), "links": state()})
got = arrived()
check("none arrived twice", len(got) == len(set(got)), len(got) - len(set(got)))
check("nothing arrived that was not sent", set(got) <= set(acked))
check("in send order", got == sorted(got))
until("site a's outbox drains", lambda: state()["backlog"] == 0, detail=state)
log(f"links_cut: {len(acked)} sends ({cut_at} before the cut), every one delivered once, in order")
