"""The evolution system across sites (issue #29): two Singularity instances and CentralCloud,
each on its own Postgres with its own pgflow, wired by links (scripts/evolution_sites.sh starts
the three clusters with the queues and contracts of topology.sql and contracts.sql).

Each service talks only to its own site's database, as the seeds' configuration has it:
  * an instance proposes changes into its local proposals_for_consensus_queue, which a
    forwarding rule sends to CentralCloud's; it executes the results it gets back and reports
    metrics (forwarded to CentralCloud's guardian), and applies rollbacks and safety profiles;
  * CentralCloud's consensus votes on each proposal and publishes the result on topic
    consensus.<instance>, which a topic rule routes to that instance only; its guardian reads
    the metrics and publishes a high-priority rollback on rollback.<instance> when the error
    count breaches; its learning loop broadcasts safety profiles (topic safety_profile.<agent>)
    to every instance.
In the middle CentralCloud's postmaster is killed (-9) and kept down while the instances go on
proposing (their messages queue locally); then it comes back and everything drains. The report
shows every hop delivered once and in order, and each link's backlog over time. Exits non-zero
on any failed check.

Usage: sites.py BINDIR NAME=PORT=DATADIR... (the instances first, CentralCloud last)"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

BINDIR = sys.argv[1]
SITES: dict[str, tuple[int, str]] = {}
for arg in sys.argv[2:]:
    name, port, datadir = arg.split("=", 2)
    SITES[name] = (int(port), datadir)
*INSTANCES, CENTRAL = list(SITES)
PROPOSALS = 60          # per instance, one every 0.4 s
OUTAGE = 15             # seconds CentralCloud stays down
BREACH_EVERY = 6        # every 6th execution breaches the error threshold: a rollback
PROFILES = ("BugFixerAgent", "RefactoringAgent")  # safety profiles broadcast before and after
failed: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def check(what: str, ok: bool, detail: Any = "") -> None:
    log(("   ok: " if ok else "   FAILED: ") + what + (f" ({detail})" if not ok and detail != "" else ""))
    if not ok:
        failed.append(what)


def dsn(site: str) -> str:
    return f"host=127.0.0.1 port={SITES[site][0]} user=postgres dbname=postgres connect_timeout=3"


def q(site: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn(site), autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def q1(site: str, sql: str, *params: Any) -> Any:
    rows = q(site, sql, *params)
    return rows[0][0] if rows else None


def until(what: str, cond: Any, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except psycopg.OperationalError:
            pass
        time.sleep(0.2)
    check(f"{what} within {seconds:.0f} s", False)
    return False


def pg_ctl(site: str, *args: str) -> None:
    d = SITES[site][1]
    subprocess.run(["sudo", "-u", "postgres", "--", f"{BINDIR}/pg_ctl", "-D", d, "-l", f"{d}/server.log",
                    "-w", "-t", "120", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- The links, as docs/operations.md ("Sites and links") sets them up ------------------------
log("== 1. sites and links")
for s in SITES:
    q(s, "SELECT pgflow.set_site(%s)", s)
    q(s, "GRANT CREATE ON DATABASE postgres TO pgflow_owner")
statements: list[tuple[str, str, str]] = []  # (subscribing site, publishing site, statement)
for i in INSTANCES:
    statements.append((CENTRAL, i, q1(i, "SELECT pgflow.link_create('central', %s, alert_age => '5 s')", CENTRAL)))
    statements.append((i, CENTRAL, q1(CENTRAL, "SELECT pgflow.link_create(%s, %s, alert_age => '5 s')", i, i)))
for at, source, stmt in statements:
    q(at, stmt.replace("host=... port=...", f"host=127.0.0.1 port={SITES[source][0]}")
              .replace("user=...", "user=postgres"))


def links(site: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn(site), autocommit=True) as c:
        cur = c.execute("SELECT * FROM pgflow.links()")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


until("every link connected",
      lambda: all(v["state"] == "connected" for s in SITES for v in links(s).values()))
for i in INSTANCES:
    q(i, "SELECT pgflow.forward('proposals_for_consensus_queue', 'central', 'proposals_for_consensus_queue')")
    q(i, "SELECT pgflow.forward('metrics_to_guardian_queue', 'central', 'metrics_to_guardian_queue')")
    q(CENTRAL, "SELECT pgflow.forward_topic(%s, %s, 'consensus_results_queue')", f"consensus.{i}", i)
    q(CENTRAL, "SELECT pgflow.forward_topic(%s, %s, 'rollback_triggers_queue')", f"rollback.{i}", i)
q(CENTRAL, "SELECT pgflow.forward_topic('safety_profile.#', NULL, 'guardian_safety_profiles_queue')")
for s in SITES:
    for kind, source, link, remote in q(s, "SELECT * FROM pgflow.link_rules()"):
        log(f"   {s}: {kind} {source} -> {link}:{remote}")

# --- The services, each on its own site's database ---------------------------------------------
stop = threading.Event()
lock = threading.Lock()
proposed: dict[str, list[str]] = {i: [] for i in INSTANCES}      # proposal ids, in send order
voted: list[tuple[str, str]] = []                                  # (instance, proposal) at central
results: dict[str, list[tuple[int, str]]] = {i: [] for i in INSTANCES}  # (central's seq, proposal)
metrics_seen: list[str] = []                                       # proposals, at the guardian
rollbacks: dict[str, list[tuple[str, int]]] = {i: [] for i in INSTANCES}  # (proposal, priority)
profiles: dict[str, list[str]] = {i: [] for i in INSTANCES}        # agent types received
errors: dict[str, int] = {}


def service(name: str, site: str, step: Any) -> threading.Thread:
    """Runs step(conn) until stop; reconnects (as the seeds' supervisors do) when its site goes
    away, counting the connection errors."""
    def run() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(dsn(site), autocommit=True) as c:
                    while not stop.is_set():
                        step(c)
            except psycopg.Error:
                with lock:
                    errors[name] = errors.get(name, 0) + 1
                time.sleep(0.5)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def proposer(instance: str) -> Any:
    def step(c: psycopg.Connection[Any]) -> None:
        if len(proposed[instance]) >= PROPOSALS:
            time.sleep(0.2)
            return
        pid = str(uuid.uuid4())
        c.execute("SELECT pgflow.send('proposals_for_consensus_queue', %s, dedup_key => %s)", (json.dumps({
            "type": "proposal_for_consensus", "proposal_id": pid, "instance_id": instance,
            "agent_type": "BugFixerAgent", "code_change": {"file": "lib/cache.ex", "change": "guard nil keys"},
            "impact_score": 8.0, "risk_score": 1.0, "timestamp": now_iso()}), pid))
        proposed[instance].append(pid)  # acknowledged: the commit returned
        time.sleep(0.4)
    return step


seq = {i: 0 for i in INSTANCES}


def consensus(c: psycopg.Connection[Any]) -> None:
    with c.transaction():
        rows = c.execute("SELECT msg_id, message FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1, "
                         "wait => '1 s')").fetchall()
        for msg_id, m in rows:
            inst = m["instance_id"]
            with lock:
                n = seq[inst] + 1
            c.execute("SELECT count(*) FROM pgflow.publish(%s, %s)", (f"consensus.{inst}", json.dumps({
                "type": "consensus_result", "proposal_id": m["proposal_id"], "instance_id": inst,
                "status": "approved", "votes": {"singularity_1": "approve", "singularity_2": "approve"},
                "confidence": 0.9, "decision_rationale": f"seq {n}", "timestamp": now_iso()})))
            c.execute("SELECT pgflow.archive('proposals_for_consensus_queue', %s)", (msg_id,))
    # Counted once the transaction committed (a crash before that votes again, and the result
    # of the lost vote was never published).
    for _, m in rows:
        with lock:
            seq[m["instance_id"]] += 1
            voted.append((m["instance_id"], m["proposal_id"]))


def executor(instance: str) -> Any:
    def step(c: psycopg.Connection[Any]) -> None:
        with c.transaction():
            rows = c.execute("SELECT msg_id, message FROM pgflow.read('consensus_results_queue', '30 s', 1, "
                             "wait => '1 s')").fetchall()
            for msg_id, m in rows:
                k = len(results[instance]) + 1
                c.execute("SELECT pgflow.send('metrics_to_guardian_queue', %s)", (json.dumps({
                    "type": "execution_metrics", "proposal_id": m["proposal_id"], "instance_id": instance,
                    "metrics_before": {"error_count": 2},
                    "metrics_after": {"error_count": 30 if k % BREACH_EVERY == 0 else 1},
                    "status": "completed", "timestamp": now_iso()}),))
                c.execute("SELECT pgflow.archive('consensus_results_queue', %s)", (msg_id,))
        for _, m in rows:
            results[instance].append((int(m["decision_rationale"].split()[1]), m["proposal_id"]))
    return step


def guardian(c: psycopg.Connection[Any]) -> None:
    with c.transaction():
        rows = c.execute("SELECT msg_id, message FROM pgflow.read('metrics_to_guardian_queue', '30 s', 1, "
                         "wait => '1 s')").fetchall()
        for msg_id, m in rows:
            if m["metrics_after"]["error_count"] > 10:
                c.execute("SELECT count(*) FROM pgflow.publish(%s, %s, priority => 100)", (
                    f"rollback.{m['instance_id']}", json.dumps({
                        "type": "rollback_trigger", "proposal_id": m["proposal_id"],
                        "instance_id": m["instance_id"], "reason": "error_rate_breach",
                        "threshold": {"error_rate": 0.10, "actual": 0.15}, "timestamp": now_iso()})))
            c.execute("SELECT pgflow.archive('metrics_to_guardian_queue', %s)", (msg_id,))
    for _, m in rows:
        with lock:
            metrics_seen.append(m["proposal_id"])


def instance_inbox(instance: str) -> Any:
    """The instance's rollback and safety-profile consumers."""
    def step(c: psycopg.Connection[Any]) -> None:
        got = False
        with c.transaction():
            for msg_id, m, prio in c.execute(
                    "SELECT r.msg_id, r.message, m.priority FROM pgflow.read('rollback_triggers_queue', '30 s', 5) r "
                    "JOIN pgflow.message m ON m.msg_id = r.msg_id JOIN pgflow.queue u "
                    "ON u.queue_id = m.queue_id AND u.queue_name = 'rollback_triggers_queue'").fetchall():
                c.execute("SELECT pgflow.archive('rollback_triggers_queue', %s)", (msg_id,))
                rollbacks[instance].append((m["proposal_id"], prio))
                got = True
            for msg_id, m in c.execute(
                    "SELECT msg_id, message FROM pgflow.read('guardian_safety_profiles_queue', '30 s', 5)").fetchall():
                c.execute("SELECT pgflow.archive('guardian_safety_profiles_queue', %s)", (msg_id,))
                profiles[instance].append(m["agent_type"])
                got = True
        if not got:
            time.sleep(0.2)
    return step


def broadcast(agent: str) -> None:
    n = q1(CENTRAL, "SELECT count(*) FROM pgflow.publish(%s, %s)", f"safety_profile.{agent}", json.dumps({
        "type": "safety_profile_update", "agent_type": agent, "source": "learning_loop",
        "safety_profile": {"success_rate": 0.95, "error_threshold": 0.1}, "timestamp": now_iso()}))
    log(f"   the learning loop broadcast {agent}'s safety profile ({n} targets)")


# --- The scenario ----------------------------------------------------------------------------
log("== 2. the services start; the learning loop broadcasts a first safety profile")
broadcast(PROFILES[0])
threads = [service(f"proposer {i}", i, proposer(i)) for i in INSTANCES]
threads += [service(f"executor {i}", i, executor(i)) for i in INSTANCES]
threads += [service(f"inbox {i}", i, instance_inbox(i)) for i in INSTANCES]
threads += [service("consensus", CENTRAL, consensus), service("guardian", CENTRAL, guardian)]

samples: list[tuple[float, dict[str, Any]]] = []
t0 = time.monotonic()


def sample() -> None:
    """Every link's backlog, once a second, from each site's links() (None: site down)."""
    row: dict[str, Any] = {}
    for s in SITES:
        try:
            for name, v in links(s).items():
                row[f"{s}->{v['remote_site']}"] = (v["backlog"], v["state"])
        except psycopg.Error:
            for at, source, _ in statements:
                if source == s:
                    row[f"{s}->{at}"] = (None, "site down")
    samples.append((time.monotonic() - t0, row))


def wait_sampling(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sample()
        try:
            if cond():
                return True
        except psycopg.Error:
            pass
        time.sleep(1)
    return False


wait_sampling(lambda: min(len(v) for v in proposed.values()) >= PROPOSALS // 4, 120)
log(f"== 3. CentralCloud's postmaster killed (-9) after {sum(len(v) for v in proposed.values())} proposals; "
    f"down for {OUTAGE} s while the instances go on proposing")
with open(f"{SITES[CENTRAL][1]}/postmaster.pid") as f:
    subprocess.run(["kill", "-9", f.readline().strip()], check=True)
down_at = time.monotonic()
during = {i: len(proposed[i]) for i in INSTANCES}
wait_sampling(lambda: time.monotonic() - down_at >= OUTAGE, OUTAGE + 5)
queued = {i: len(proposed[i]) - during[i] for i in INSTANCES}
backlog_peak = {i: links(i)["central"]["backlog"] for i in INSTANCES}
check("the instances went on proposing while CentralCloud was down (sends queue locally)",
      all(n > 0 for n in queued.values()), queued)
log(f"   proposals sent during the outage: {queued}; backlog of the instances' links: {backlog_peak}")
deadline = time.monotonic() + 120
while True:  # its shared memory may still be held by children that have not noticed yet
    try:
        pg_ctl(CENTRAL, "start")
        break
    except subprocess.CalledProcessError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
log("== 4. CentralCloud is back; the learning loop broadcasts a second safety profile")
broadcast(PROFILES[1])
total = PROPOSALS * len(INSTANCES)
ok = wait_sampling(lambda: min(len(v) for v in proposed.values()) >= PROPOSALS
                   and sum(len(v) for v in results.values()) >= total and len(metrics_seen) >= total
                   and sum(len(v) for v in rollbacks.values()) >= (total // BREACH_EVERY)
                   and all(len(v) >= len(PROFILES) for v in profiles.values()), 180)
check("every hop drained after the outage", ok,
      {"proposed": {i: len(v) for i, v in proposed.items()}, "results": {i: len(v) for i, v in results.items()},
       "metrics": len(metrics_seen), "rollbacks": {i: len(v) for i, v in rollbacks.items()},
       "profiles": profiles})
wait_sampling(lambda: all(v["backlog"] == 0 for s in SITES for v in links(s).values()), 60)
stop.set()
for th in threads:
    th.join(timeout=10)

# --- The report ------------------------------------------------------------------------------
log("== 5. every hop, once and in order")
by_inst_voted = {i: [p for inst, p in voted if inst == i] for i in INSTANCES}
for i in INSTANCES:
    check(f"{i} -> CentralCloud: every proposal voted on once, in the order {i} sent them "
          f"({len(by_inst_voted[i])} of {len(proposed[i])})", by_inst_voted[i] == proposed[i],
          {"missing": len(set(proposed[i]) - set(by_inst_voted[i])),
           "twice": len(by_inst_voted[i]) - len(set(by_inst_voted[i]))})
    got = results[i]
    check(f"CentralCloud -> {i}: every result once, only {i}'s, in the order CentralCloud published "
          f"them ({len(got)})",
          [p for _, p in got] == by_inst_voted[i] and [n for n, _ in got] == list(range(1, len(got) + 1)))
    breach = [p for k, (_, p) in enumerate(results[i], 1) if k % BREACH_EVERY == 0]
    check(f"CentralCloud -> {i}: every rollback once, with its priority 100 ({len(rollbacks[i])})",
          sorted(p for p, _ in rollbacks[i]) == sorted(breach) and all(pr == 100 for _, pr in rollbacks[i]))
    check(f"CentralCloud -> {i}: every safety profile broadcast once ({profiles[i]})",
          sorted(profiles[i]) == sorted(PROFILES))
all_results = [p for i in INSTANCES for _, p in results[i]]
check(f"instances -> the guardian: every execution's metrics once ({len(metrics_seen)})",
      sorted(metrics_seen) == sorted(all_results))
for s in SITES:
    dead = q1(s, "SELECT coalesce(sum(dlq_length), 0) FROM pgflow.metrics_all()")
    refused = q1(s, "SELECT count(*) FROM pgflow.link_refused")
    check(f"{s}: no dead letter, nothing refused, every outbox empty",
          dead == 0 and refused == 0 and all(v["backlog"] == 0 for v in links(s).values()),
          {"dead": dead, "refused": refused})
log(f"   connection errors the services rode out (reconnecting): {errors or 'none'}")

log("== 6. each link's backlog over time (messages waiting in its outbox; '-' its site down)")
names = sorted({k for _, row in samples for k in row})
log("   " + "t (s)".rjust(6) + "".join(n.rjust(30) for n in names))
step = max(1, len(samples) // 40)
for k, (t, row) in enumerate(samples):
    if k % step and k != len(samples) - 1 and not any(v[0] is None for v in row.values()):
        continue
    cells = []
    for n in names:
        v = row.get(n)
        cells.append(("-" if v is None or v[0] is None else f"{v[0]} {v[1]}").rjust(30))
    log("   " + f"{t:6.1f}" + "".join(cells))

if failed:
    log(f"evolution across sites: {len(failed)} check(s) FAILED")
    sys.exit(1)
log("evolution across sites: every hop checked")
