"""Sites apart (issue #29): three pgflow sites on loopback (tests/cluster/links.sh starts them),
wired by links as docs/operations.md ("Sites and links") says. Each check reads the servers'
own state; every wait is bounded and polls. What is checked:
  * the set-up: site names, link_create's subscription statement run as returned (with the
    connection string filled in), forward() refused until the remote has subscribed;
  * exactly once and in send order, with headers, priority, group, dedup key and due time
    carried and the origin recorded; topic rules to one link and to every link;
  * kill -9 of the remote postmaster mid-stream, of the local postmaster mid-stream (every
    acknowledged send arrives once), of the remote's apply worker and of the local walsender;
  * a subscription left without an apply worker: the remote's pgflow worker wakes Postgres's
    launcher (16.2's can sleep through a failed worker's exit for 3 minutes);
  * the remote stopped under load: sends stay local, links() shows the backlog and its age and
    the alert; after the restart everything arrives once, in order;
  * refusals: a missing remote queue and a contract refuse at the remote (kept in
    link_refused with the reason, the messages behind them arrive), a loop is cut, a rule
    dropped while messages are in flight, a remote database without pgflow, wrong
    credentials, bad arguments, DROP EXTENSION with links, link_drop while in use;
  * roles: a producer can neither manage links nor read them, nor read a subscription's
    connection string."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import psycopg
from sites import (DSN, arrived, check, conn, exactly_once, filled, link_state, log, q, q1,
                   sqlstate, until)

BINDIR, VER = sys.argv[1], sys.argv[2]
SITES: dict[str, tuple[int, str]] = {}
for arg in sys.argv[3:]:
    name, port, datadir = arg.split("=", 2)
    SITES[name] = (int(port), datadir)
    DSN[name] = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"
# How long the remote stays down in the outage check: a minute on 15, less on the others (the
# same code path; the suite's time is shared).
OUTAGE = int(os.environ.get("LINKS_OUTAGE") or (60 if VER == "15" else 15))


def as_postgres(*cmd: str) -> None:
    subprocess.run(["sudo", "-u", "postgres", "--", *cmd], check=True, stdout=subprocess.DEVNULL)


def pg_ctl(site: str, *args: str) -> None:
    d = SITES[site][1]
    as_postgres(f"{BINDIR}/pg_ctl", "-D", d, "-l", f"{d}/server.log", "-w", "-t", "120", *args)


def postmaster_pid(site: str) -> int:
    with open(f"{SITES[site][1]}/postmaster.pid") as f:
        return int(f.readline())


def kill9_postmaster(site: str) -> None:
    pid = postmaster_pid(site)
    os.kill(pid, signal.SIGKILL)
    # Its children leave once they notice; until then a new postmaster refuses the data
    # directory (its shared memory is still in use): try again.
    deadline = time.monotonic() + 120
    while True:
        try:
            pg_ctl(site, "start")
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                check(f"site {site} starts again after kill -9", False)
            time.sleep(0.5)


def subscribe(remote: str, source: str, statement: str, name_hint: str) -> None:
    """Runs link_create's statement at the remote, with the connection string filled in."""
    check(f"link_create's statement for {name_hint} names the slot and copy_data = false",
          "slot_name = 'pgflow_link_" in statement and "copy_data = false" in statement, statement)
    q(remote, filled(statement, "127.0.0.1", SITES[source][0]))


def drained(site: str, link: str) -> None:
    until(f"{site}'s outbox of link {link} drains", lambda: link_state(site, link)["backlog"] == 0)


# --- Set-up ----------------------------------------------------------------------------------
for s in SITES:
    q(s, "SELECT pgflow.set_site(%s)", s)
    q(s, "GRANT CREATE ON DATABASE postgres TO pgflow_owner")
check("a link to the site itself is refused (22023)",
      sqlstate("a", "SELECT pgflow.link_create('self', 'a')") == "22023")
check("link_create with failover NULL is refused (22023)",
      sqlstate("a", "SELECT pgflow.link_create('x', 'c', failover => NULL)") == "22023")
if int(VER) < 17:
    check("link_create with failover on Postgres 15 and 16 is refused (0A000)",
          sqlstate("a", "SELECT pgflow.link_create('x', 'c', failover => true)") == "0A000")
check("a link name with capitals is refused (22023)",
      sqlstate("a", "SELECT pgflow.link_create('Central', 'c')") == "22023")
stmts = {
    ("a", "central"): q1("a", "SELECT pgflow.link_create('central', 'c', alert_age => '3 s')"),
    ("b", "central"): q1("b", "SELECT pgflow.link_create('central', 'c')"),
    ("c", "a"): q1("c", "SELECT pgflow.link_create('a', 'a')"),
    ("c", "b"): q1("c", "SELECT pgflow.link_create('b', 'b')"),
}
check("a second link of the same name is refused (42710)",
      sqlstate("a", "SELECT pgflow.link_create('central', 'c')") == "42710")
check("the site's name cannot change while it has links (55006)",
      sqlstate("a", "SELECT pgflow.set_site('a2')") == "55006")
for s in SITES:
    q(s, "SELECT pgflow.create_queue(n) FROM unnest(ARRAY['proposals', 'proposals_out', "
         "'consensus', 'safety', 'misc', 'strict', 'strict_out', 'echo']) n")
check("forward() before the remote subscribed is refused (55000)",
      sqlstate("a", "SELECT pgflow.forward('proposals_out', 'central', 'proposals')") == "55000")
check("an unknown link is refused (42704)",
      sqlstate("a", "SELECT pgflow.forward('proposals_out', 'nolink', 'proposals')") == "42704")
check("links() says 'not subscribed' before the subscription",
      link_state("a", "central")["state"] == "not subscribed")
# One at a time: Postgres's logical replication launcher, woken by two subscriptions' commits
# in quick succession, may start the second one's apply worker only at its next cycle (up to
# 3 minutes later; seen on 16).
for (s, link), remote in zip(stmts, ("c", "c", "a", "b")):
    subscribe(remote, s, stmts[(s, link)], f"{s} -> {remote}")
    until(f"{s}'s link {link} connected", lambda s=s, link=link: link_state(s, link)["state"] == "connected",
          detail=lambda s=s, link=link: (link_state(s, link), q(s, "SELECT * FROM pg_replication_slots"),
                                         q(s, "SELECT * FROM pgflow.worker_status()")))
    log(f"{s}'s link {link}: {link_state(s, link)['state']}")
for s in ("a", "b"):
    q(s, "SELECT pgflow.forward('proposals_out', 'central', 'proposals')")
    q(s, "SELECT pgflow.forward('misc', 'central', 'nosuch')")
    q(s, "SELECT pgflow.forward('strict_out', 'central', 'strict')")
check("forward() of the same rule again returns false",
      q1("a", "SELECT pgflow.forward('proposals_out', 'central', 'proposals')") is False)
q("c", "SELECT pgflow.forward_topic('consensus.a.#', 'a', 'consensus')")
q("c", "SELECT pgflow.forward_topic('consensus.b.#', 'b', 'consensus')")
q("c", "SELECT pgflow.forward_topic('safety.#', NULL, 'safety')")
rules = q("c", "SELECT kind, source, link_name, remote_queue FROM pgflow.link_rules()")
check("link_rules() lists the topic rules, the broadcast first",
      rules == [("topic", "safety.#", None, "safety"), ("topic", "consensus.a.#", "a", "consensus"),
                ("topic", "consensus.b.#", "b", "consensus")], rules)

# --- Exactly once, in order, with everything a message carries --------------------------------
acked: list[int] = []
with conn("a") as c:
    for i in range(100):
        acked.append(c.execute("SELECT pgflow.send('proposals_out', jsonb_build_object('n', %s::int))",
                               (i,)).fetchone()[0])  # type: ignore[index]
    for t in range(20):
        with c.transaction():
            for i in range(3):
                acked.append(c.execute("SELECT pgflow.send('proposals_out', jsonb_build_object('t', %s::int))",
                                       (t,)).fetchone()[0])  # type: ignore[index]
    rolled_back: list[int] = []
    try:
        with c.transaction():
            for i in range(5):
                rolled_back.append(c.execute("SELECT pgflow.send('proposals_out', '{\"gone\": 1}')")
                                   .fetchone()[0])  # type: ignore[index]
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    acked += [r[0] for r in c.execute(
        "SELECT pgflow.send_batch('proposals_out', array_agg(jsonb_build_object('b', g)), "
        "array_agg(jsonb_build_object('hb', g))) FROM generate_series(1, 50) g").fetchall()]
    special = c.execute(
        "SELECT pgflow.send('proposals_out', '{\"special\": 1}', headers => '{\"trace\": \"x1\"}', "
        "priority => 7, group_key => 'g1', deliver_at => now() + interval '1 hour')").fetchone()[0]  # type: ignore[index]
    d1 = c.execute("SELECT pgflow.send('proposals_out', '{\"dedup\": 1}', dedup_key => 'k1')").fetchone()[0]  # type: ignore[index]
    d2 = c.execute("SELECT pgflow.send('proposals_out', '{\"dedup\": 2}', dedup_key => 'k1')").fetchone()[0]  # type: ignore[index]
    acked += [special, d1]
check("a forwarded queue keeps nothing locally",
      q1("a", "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
              "WHERE u.queue_name = 'proposals_out'") == 0)
exactly_once("plain sends, transactions, a batch", "c", "proposals", "a", acked, set(acked) | {d2})
got = {o: m for _, o, m in arrived("c", "proposals", "a")}
check("a rolled-back send never arrives", not (set(rolled_back) & set(got)))
check("the second send with the same dedup key is dropped at the remote", d2 not in got)
row = q("c", "SELECT m.priority, m.group_key, m.state, m.vt > now() + interval '50 minutes', "
             "m.headers ->> 'trace', m.headers -> 'pgflow_origin', m.headers -> 'pgflow_via' "
             "FROM pgflow.message m WHERE (m.headers -> 'pgflow_origin' ->> 'id')::bigint = %s "
             "AND m.headers -> 'pgflow_origin' ->> 'site' = 'a'", special)[0]
check("priority, group key, due time and headers travel; the origin is in the headers",
      row == (7, "g1", "d", True, "x1", {"site": "a", "queue": "proposals_out", "id": special}, ["a"]), row)
check("batch headers travel", q1("c", "SELECT count(*) FROM pgflow.message "
                                      "WHERE headers ? 'hb' AND headers -> 'pgflow_origin' ->> 'site' = 'a'") == 50)
drained("a", "central")
check("links() counts what the remote confirmed", link_state("a", "central")["forwarded"] >= len(acked))
check("links() has the remote's last answer, a few seconds old at most, while connected",
      q1("a", "SELECT feedback_at > now() - interval '30 s' FROM pgflow.links() WHERE link_name = 'central'")
      is True, link_state("a", "central"))

# Topic rules: to the site named in the key, and to every site.
pub = q("c", "SELECT * FROM pgflow.publish('consensus.a.p1', '{\"vote\": \"yes\"}')")
check("publish reports the link and remote queue it forwarded to", [r[0] for r in pub] == ["a:consensus"], pub)
q("c", "SELECT pgflow.publish('safety.v1', '{\"profile\": 1}')")
until("the consensus result reaches site a only, the broadcast both",
      lambda: q1("a", "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
                      "WHERE u.queue_name IN ('consensus', 'safety')") == 2
      and q1("b", "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
                  "WHERE u.queue_name IN ('consensus', 'safety')") == 1)
check("the topic is in the forwarded message's headers",
      q1("a", "SELECT headers ->> 'topic' FROM pgflow.message WHERE message ? 'vote'") == "consensus.a.p1")


# --- Kills mid-stream ----------------------------------------------------------------------
def stream(site: str, n: int, at: int, event: threading.Event, acked: list[int],
           attempted: set[int], tag: str) -> None:
    """Sends n messages one by one, each in its own transaction, recording the acknowledged
    ids; sets event after `at` acknowledgements. On a lost connection it reconnects and goes
    on (a send whose commit was not acknowledged may or may not have happened)."""
    i = 0
    c: psycopg.Connection[Any] | None = None
    deadline = time.monotonic() + 300
    while i < n and time.monotonic() < deadline:
        try:
            if c is None:
                c = conn(site)
            cur = c.execute("SELECT pgflow.send('proposals_out', jsonb_build_object('tag', %s::text, 'i', %s::int))",
                            (tag, i))
            mid = cur.fetchone()[0]  # type: ignore[index]
            acked.append(mid)
            attempted.add(mid)
            i += 1
            if len(acked) == at:
                event.set()
        except psycopg.Error:
            if c is not None:
                c.close()
            c = None
            time.sleep(0.2)
    if c is not None:
        c.close()


def kill_run(what: str, kill: Any, site: str = "a", n: int = 1500, at: int = 400) -> None:
    acked: list[int] = []
    attempted: set[int] = set()
    ev = threading.Event()
    # The next ids the sequence gives: anything in between may have been sent unacknowledged.
    first = q1(site, "SELECT last_value + 1 FROM pgflow.q" + str(q1(site, "SELECT queue_id FROM pgflow.queue "
                                                                           "WHERE queue_name = 'proposals_out'")) + "_msg_seq")
    t = threading.Thread(target=stream, args=(site, n, at, ev, acked, attempted, what))
    t.start()
    check(f"{what}: the stream started", ev.wait(120))
    kill()
    t.join(400)
    check(f"{what}: the stream finished", not t.is_alive() and len(acked) == n, len(acked))
    last = max(acked)
    exactly_once(what, "c", "proposals", site, acked, set(range(first, last + 1)))
    drained(site, "central")


kill_run("kill -9 of the remote postmaster mid-stream", lambda: kill9_postmaster("c"))
kill_run("kill -9 of the local postmaster mid-stream", lambda: kill9_postmaster("a"))


def kill_apply() -> None:
    pid = q1("c", "SELECT pid FROM pg_stat_subscription WHERE subname = 'pgflow_from_a_central' "
                  "AND relid IS NULL")
    check("the remote's apply worker runs", pid is not None)
    os.kill(pid, signal.SIGKILL)


def kill_walsender() -> None:
    pid = q1("a", "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pgflow_link_1'")
    check("the local walsender runs", pid is not None)
    os.kill(pid, signal.SIGKILL)


kill_run("kill -9 of the remote's apply worker mid-stream", kill_apply)
kill_run("kill -9 of the local walsender mid-stream", kill_walsender)


def launcher_nudged() -> None:
    """A subscription of pgflow's left without an apply worker, with Postgres's launcher that
    would restart it unable to (stopped here; on 16.2 it can sleep through the wake-up, see
    nudge_launcher in src/worker/maintainer.rs): the remote's pgflow worker notices within a
    few ticks and sets the launcher's latch, and says so in the log once."""
    log_path = f"{SITES['c'][1]}/server.log"
    start = os.path.getsize(log_path)
    launcher = q1("c", "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logical replication launcher'")
    check("the remote's logical replication launcher runs", launcher is not None)
    os.kill(launcher, signal.SIGSTOP)
    try:
        apply = q1("c", "SELECT pid FROM pg_stat_subscription WHERE subname = 'pgflow_from_a_central' "
                        "AND relid IS NULL")
        check("the remote's apply worker runs", apply is not None)
        q("c", "SELECT pg_terminate_backend(%s)", apply)

        def said() -> bool:
            with open(log_path, errors="replace") as f:
                f.seek(start)
                return "pgflow_from_a_central has had no apply worker" in f.read()
        until("the remote's pgflow worker wakes the launcher of a subscription without apply worker",
              said, seconds=60)
    finally:
        os.kill(launcher, signal.SIGCONT)
    until("the link is connected again", lambda: link_state("a", "central")["state"] == "connected")


launcher_nudged()

# --- The remote down under load ------------------------------------------------------------
acked = []
attempted: set[int] = set()
ev = threading.Event()
pg_ctl("c", "-m", "fast", "stop")
stop_at = time.monotonic()


def paced() -> None:
    with conn("a") as c:
        while time.monotonic() - stop_at < OUTAGE:
            acked.append(c.execute("SELECT pgflow.send('proposals_out', '{\"outage\": 1}')").fetchone()[0])  # type: ignore[index]
            time.sleep(0.01)


pacer = threading.Thread(target=paced)
pacer.start()
until("links() shows the link down with a backlog",
      lambda: (st := link_state("a", "central"))["connected"] is False and st["backlog"] > 0, 30)
until("the link's alert fires once its oldest message is older than alert_age (3 s)",
      lambda: link_state("a", "central")["alerting"] is True, 30)


def exposed(name: str, labels: str = 'database="postgres"') -> float | None:
    text = q1("a", "SELECT pgflow.metrics_text()")
    for line in text.splitlines():
        if line.startswith(name + "{" + labels + "} "):
            return float(line.split()[-1])
    return None


CENTRAL = 'database="postgres",link="central",remote_site="c"'


def page() -> str:
    """Site a's status page, from its endpoint (links.sh turns it on at site a only)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{os.environ['LINKS_METRICS_PORT']}/", timeout=30) as r:
        return str(r.read().decode())


def page_row(link: str) -> str:
    html = page()
    start = html.find(f'<tr data-link="postgres/{link}">')
    return html[start:html.find("</tr>", start)] if start >= 0 else ""


until("the Prometheus text shows the link down, its backlog and its age",
      lambda: exposed("pgflow_links_down") == 1 and (exposed("pgflow_link_backlog_messages") or 0) > 0
      and (exposed("pgflow_link_oldest_unforwarded_seconds") or 0) > 3
      and exposed("pgflow_links_alerting") == 1, 30)
until("links() names the trouble and since when (last_error, last_error_at, down_since)",
      lambda: (st := link_state("a", "central"))["last_error"] is not None
      and st["last_error"].startswith("disconnected: ") and st["down_since"] is not None
      and st["last_error_at"] is not None and st["down_since"] <= st["last_error_at"], 30,
      detail=lambda: link_state("a", "central"))
check("the last error holds no connection string, host or role",
      not any(w in link_state("a", "central")["last_error"] for w in ("host=", "127.0.0.1", "user=", "password")))
until("the endpoint shows the link by name: down, its backlog, for how long, since its trouble",
      lambda: exposed("pgflow_link_up", CENTRAL) == 0
      and (exposed("pgflow_link_waiting_messages", CENTRAL) or 0) > 0
      and (exposed("pgflow_link_oldest_waiting_seconds", CENTRAL) or 0) > 3
      and (exposed("pgflow_link_down_seconds", CENTRAL) or 0) > 0
      and (exposed("pgflow_link_last_error_timestamp_seconds", CENTRAL) or 0) > 1.7e9
      and exposed("pgflow_link_state", 'database="postgres",link="central",state="disconnected"') == 1, 30)
until("the status page lists the link with its state, its backlog and how long it has been down",
      lambda: "disconnected, past alert_age" in (row := page_row("central")) and "state bad" in row
      and " ago</td>" in row, 30, detail=lambda: page_row("central"))
pacer.join()
st = link_state("a", "central")
check("while the remote is down every send stays in the outbox",
      st["backlog"] >= len(acked) and st["state"] == "disconnected", st)
log(f"outage of {OUTAGE} s: {len(acked)} sends queued locally, oldest {st['oldest_age']:.1f} s, "
    f"WAL kept {st['wal_kept_bytes']} bytes")
pg_ctl("c", "start")
exactly_once("the remote stopped under load", "c", "proposals", "a", acked)
drained("a", "central")
until("the endpoint counts the forwarded messages (pgflow_link_forwarded_total)",
      lambda: (exposed("pgflow_link_forwarded_total") or 0) >= link_state("a", "central")["forwarded"] > 0, 30)
check("the alert clears once the backlog is gone", link_state("a", "central")["alerting"] is False)
until("the Prometheus text shows the links up again",
      lambda: exposed("pgflow_links_down") == 0 and exposed("pgflow_links") == 1
      and exposed("pgflow_link_backlog_messages") == 0, 30)
until("links() keeps the last error once the link is back, and down_since clears",
      lambda: (st := link_state("a", "central"))["down_since"] is None
      and (st["last_error"] or "").startswith("disconnected: "), 30, detail=lambda: link_state("a", "central"))
until("the endpoint shows the link up again, by name",
      lambda: exposed("pgflow_link_up", CENTRAL) == 1 and exposed("pgflow_link_down_seconds", CENTRAL) == 0
      and exposed("pgflow_link_waiting_messages", CENTRAL) == 0
      and (exposed("pgflow_link_confirmed_total", CENTRAL) or 0) >= link_state("a", "central")["forwarded"], 30)
until("the status page shows the link connected", lambda: "state good" in page_row("central"), 30,
      detail=lambda: page_row("central"))

# --- Refusals at the remote, and a loop -----------------------------------------------------
q("c", "SELECT pgflow.set_contract('strict', '{\"type\": \"object\", \"required\": [\"id\"]}')")
with conn("a") as c:
    for i in range(3):
        c.execute("SELECT pgflow.send('misc', jsonb_build_object('lost', %s::int))", (i,))
    c.execute("SELECT pgflow.send('strict_out', '{\"no_id\": 1}')")
    c.execute("SELECT pgflow.send('strict_out', '{\"id\": 1}')")
    behind = [c.execute("SELECT pgflow.send('proposals_out', '{\"behind\": 1}')").fetchone()[0]]  # type: ignore[index]
exactly_once("messages behind refused ones", "c", "proposals", "a", behind)
refused = q("c", "SELECT remote_queue, sqlstate, origin ->> 'site' FROM pgflow.link_refused ORDER BY refused_id")
check("a missing remote queue and a contract refuse at the remote, kept with the reason",
      refused == [("nosuch", "42704", "a")] * 3 + [("strict", "23514", "a")], refused)
check("the message the contract accepts arrives",
      q1("c", "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
              "WHERE u.queue_name = 'strict'") == 1)
rid = q1("c", "SELECT refused_id FROM pgflow.link_refused WHERE remote_queue = 'nosuch' ORDER BY 1 LIMIT 1")
new_id = q1("c", "SELECT pgflow.link_refused_retry(%s, 'misc')", rid)
check("link_refused_retry sends a refused message to a queue, with its origin",
      q1("c", "SELECT headers -> 'pgflow_origin' ->> 'site' FROM pgflow.message m "
              "JOIN pgflow.queue u USING (queue_id) WHERE u.queue_name = 'misc' AND m.msg_id = %s", new_id) == "a"
      and q1("c", "SELECT count(*) FROM pgflow.link_refused") == 3)
# a -> c -> a: site c's echo forwards back to a, whose echo forwards to c.
q("a", "SELECT pgflow.forward('echo', 'central', 'echo')")
q("c", "SELECT pgflow.forward('echo', 'a', 'echo')")
q("a", "SELECT pgflow.send('echo', '{\"ping\": 1}')")
until("a loop is cut at the site that would send it back",
      lambda: q1("c", "SELECT count(*) FROM pgflow.link_refused WHERE remote_queue = 'echo' "
                      "AND reason LIKE 'forwarding loop%%'") == 1)
q("c", "SELECT pgflow.unforward('echo')")

# A rule dropped while messages are in flight: what was sent before goes, what after stays.
pg_ctl("c", "-m", "fast", "stop")
with conn("a") as c:
    before = [c.execute("SELECT pgflow.send('proposals_out', '{\"inflight\": 1}')").fetchone()[0]  # type: ignore[index]
              for _ in range(20)]
    check("unforward() while the remote is down", c.execute("SELECT pgflow.unforward('proposals_out')").fetchone()[0])  # type: ignore[index]
    after = [c.execute("SELECT pgflow.send('proposals_out', '{\"inflight\": 2}')").fetchone()[0]  # type: ignore[index]
             for _ in range(5)]
pg_ctl("c", "start")
exactly_once("a rule dropped with messages in flight", "c", "proposals", "a", before)
check("sends after the rule was dropped stay local",
      [r[0] for r in q("a", "SELECT m.msg_id FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
                            "WHERE u.queue_name = 'proposals_out' ORDER BY 1")] == after)
q("a", "SELECT pgflow.forward('proposals_out', 'central', 'proposals')")

# The slot lost (the remote dropped its subscription) and made again: what waited meanwhile
# goes in again at the worker's first sight of the new slot, and arrives once.
sub = stmts[("a", "central")].split()[2]
q("c", f"DROP SUBSCRIPTION {sub}")
until("links() says the slot is lost", lambda: link_state("a", "central")["state"] == "slot lost", 30)
left = link_state("a", "central")["backlog"]
with conn("a") as c:
    waiting = [c.execute("SELECT pgflow.send('proposals_out', '{\"lost\": 1}')").fetchone()[0]  # type: ignore[index]
               for _ in range(30)]
time.sleep(2)  # worker rounds with no slot: nothing may leave the outbox (checked next)
st = link_state("a", "central")
check("without a slot every message stays in the outbox", st["backlog"] == left + 30, st)
before_loss = {o for _, o, _ in arrived("c", "proposals", "a")}
outbox = {r[0] for r in q("a", "SELECT (origin ->> 'id')::bigint FROM pgflow.link_outbox")}
subscribe("c", "a", stmts[("a", "central")], "a -> c again")
until("the slot lost and made again: every waiting send arrives",
      lambda: {o for _, o, _ in arrived("c", "proposals", "a")} >= set(waiting))
drained("a", "central")
rows = q("c", "SELECT (m.headers -> 'pgflow_origin' ->> 'id')::bigint, m.headers ? 'pgflow_resent' "
              "FROM pgflow.message m WHERE m.headers -> 'pgflow_origin' ->> 'site' = 'a'")
ids = [r[0] for r in rows]
twice = {i for i in ids if ids.count(i) > 1}
check("the slot lost and made again: what waited arrives marked pgflow_resent",
      all(resent for i, resent in rows if i in set(waiting)))
check("the slot lost and made again: only what the outbox held then can arrive twice, marked",
      twice <= (outbox & before_loss)
      and all(sum(1 for j, r in rows if j == i and r) == 1 for i in twice), sorted(twice)[:5])
log(f"slot lost: {len(outbox)} in the outbox at the loss, {len(outbox & before_loss)} of them "
    f"already applied under the former slot (these arrive twice, marked)")

# A remote database without pgflow: its subscription is refused there, nothing is subscribed.
q("c", "CREATE DATABASE nopgflow")
ghost = q1("a", "SELECT pgflow.link_create('ghost', 'g')")
ghost_sub = filled(ghost, "127.0.0.1", SITES["a"][0])
ghost_st = sqlstate("c", ghost_sub, db="nopgflow")
check("a remote database without pgflow refuses the subscription (3F000: no schema pgflow)",
      ghost_st == "3F000", ghost_st)
check("wrong credentials: the subscription is refused by the source",
      sqlstate("c", ghost_sub.replace("user=postgres", "user=nosuch"), db="nopgflow") is not None)
check("the link stays unsubscribed", link_state("a", "ghost")["state"] == "not subscribed")
check("link_drop refuses while a rule uses the link (55006)",
      sqlstate("a", "SELECT pgflow.link_drop('central')") == "55006")
q("a", "SELECT pgflow.link_drop('ghost')")
check("link_drop drops an unused link and its publication",
      q1("a", "SELECT count(*) FROM pgflow.link WHERE link_name = 'ghost'") == 0
      and q1("a", "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgflow_link_%%'") == 1)

# DROP EXTENSION with links.
check("DROP EXTENSION pgflow with links is refused (55006)",
      sqlstate("a", "DROP EXTENSION pgflow CASCADE") == "55006")

# --- Roles ----------------------------------------------------------------------------------
for s in ("a", "c"):
    q(s, "CREATE ROLE prod LOGIN IN ROLE pgflow_producer")
    q(s, "SELECT pgflow.grant('proposals_out', 'prod', 'produce')")
check("a producer cannot create a link (42501)",
      sqlstate("a", "SELECT pgflow.link_create('mine', 'x')", user="prod") == "42501")
check("a producer cannot add a forwarding rule (42501)",
      sqlstate("a", "SELECT pgflow.forward('proposals_out', 'central', 'elsewhere')", user="prod") == "42501")
check("a producer cannot see links (42501)",
      sqlstate("a", "SELECT * FROM pgflow.links()", user="prod") == "42501")
check("a producer cannot read refused messages (42501)",
      sqlstate("c", "SELECT * FROM pgflow.link_refused_list()", user="prod") == "42501")
check("a producer cannot read pgflow's link tables (42501)",
      sqlstate("a", "SELECT * FROM pgflow.link", user="prod") == "42501")
check("a producer cannot read a subscription's connection string (42501)",
      sqlstate("c", "SELECT subconninfo FROM pg_subscription", user="prod") == "42501")
check("a producer's send to a forwarded queue is forwarded",
      sqlstate("a", "SELECT pgflow.send('proposals_out', '{\"by\": \"prod\"}')", user="prod") is None)
until("the producer's message arrives", lambda: q1(
    "c", "SELECT count(*) FROM pgflow.message WHERE message ->> 'by' = 'prod'") == 1)
check("a producer cannot write a link's outbox (42501)",
      sqlstate("a", "INSERT INTO pgflow.link_outbox (link_id, sent_at, origin, via, remote_queue, message) "
                    "VALUES (1, now(), '{}', '{}', 'proposals', '{}')", user="prod") == "42501")


def receiving_without_superuser() -> None:
    """Postgres 16 and later: a link's subscription owned by a role without superuser, as
    docs/operations.md sets it up: pg_create_subscription, CREATE on the database,
    pgflow_link_receiver, produce grants on its target queues only, run_as_owner = true, and a
    password to the sending site (Postgres requires one for such an owner)."""
    hba = f"{SITES['a'][1]}/pg_hba.conf"
    with open(hba) as f:
        rules = f.read()
    with open(hba, "w") as f:
        f.write("host all link_in 127.0.0.1/32 scram-sha-256\n"
                "host replication link_in 127.0.0.1/32 scram-sha-256\n" + rules)
    q("a", "SELECT pg_reload_conf()")
    q("a", "CREATE ROLE link_in LOGIN REPLICATION PASSWORD 'a-secret'")
    for queue in ("nsu_granted", "nsu_other"):
        q("a", "SELECT pgflow.create_queue(%s)", queue)
        q("c", "SELECT pgflow.create_queue(%s)", queue)
    q("c", "CREATE ROLE receiver LOGIN")
    q("c", "GRANT pg_create_subscription, pgflow_link_receiver, pgflow_producer TO receiver")
    q("c", "GRANT CREATE ON DATABASE postgres TO receiver")
    q("c", "SELECT pgflow.grant('nsu_granted', 'receiver', 'produce')")
    stmt = q1("a", "SELECT pgflow.link_create('nsu', 'c')")
    sub = filled(stmt, "127.0.0.1", SITES["a"][0], user="user=link_in password=a-secret",
                 options="run_as_owner = true")
    with conn("c", user="receiver") as c:
        c.execute(sub)  # type: ignore[arg-type]
    check("the subscription is owned by a role without superuser",
          q1("c", "SELECT NOT r.rolsuper FROM pg_subscription s JOIN pg_roles r ON r.oid = s.subowner "
                  "WHERE s.subname = 'pgflow_from_a_nsu'") is True)
    until("the link is connected", lambda: link_state("a", "nsu")["state"] == "connected",
          detail=lambda: link_state("a", "nsu"))
    q("a", "SELECT pgflow.forward('nsu_granted', 'nsu', 'nsu_granted')")
    q("a", "SELECT pgflow.forward('nsu_other', 'nsu', 'nsu_other')")
    sent = [q1("a", "SELECT pgflow.send('nsu_granted', jsonb_build_object('n', %s::int))", i) for i in range(3)]
    q("a", "SELECT pgflow.send('nsu_other', '{\"n\": 99}')")
    exactly_once("a subscription without superuser", "c", "nsu_granted", "a", sent)
    # A queue the owner has no grant on reads as missing to it, as to any role (the role model).
    until("a queue the owner has no produce grant on refuses (42704, as missing to it), kept in link_refused",
          lambda: q1("c", "SELECT sqlstate FROM pgflow.link_refused WHERE remote_queue = 'nsu_other'") == "42704",
          detail=lambda: q("c", "SELECT remote_queue, sqlstate, reason FROM pgflow.link_refused "
                                "ORDER BY refused_id DESC LIMIT 3"))
    check("nothing reached that queue", q1("c", "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u "
                                                "USING (queue_id) WHERE u.queue_name = 'nsu_other'") == 0)
    check("outside an apply, the receiving role cannot write the outbox (42501)",
          sqlstate("c", "INSERT INTO pgflow.link_outbox (link_id, sent_at, origin, via, remote_queue, message) "
                        "VALUES (1, now(), '{}', '{}', 'a', '{}')", user="receiver") == "42501")
    check("nor read it, nor any other pgflow table (42501)",
          sqlstate("c", "SELECT * FROM pgflow.link_outbox", user="receiver") == "42501"
          and sqlstate("c", "SELECT * FROM pgflow.message", user="receiver") == "42501")
    q("a", "SELECT pgflow.unforward('nsu_granted')")
    q("a", "SELECT pgflow.unforward('nsu_other')")
    drained("a", "nsu")


if int(VER) >= 16:
    receiving_without_superuser()
else:
    log("Postgres 15: a subscription needs a superuser owner (16 added pg_create_subscription)")
log("links: every check passed")
