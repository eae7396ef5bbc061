"""Failover under load (tests/cluster/ha.sh starts pg_auto_failover's monitor, primary and
secondary and passes the DSNs; HA_KILL, HA_RESTART and HA_MONITOR come from it).

Producers send through a multi-host connection string with target_session_attrs=read-write;
each message has a unique key, sent as its dedup_key, and a send is repeated with the same key
until it is acknowledged (a lost connection, a standby, a fenced primary or an unknown outcome
all mean: not known to be stored). Consumers read, note what each id carried, and archive
with the receipt. The primary's node is killed mid-load, the monitor fails over, and the load
goes on against the new primary; then the old node is restarted and must rejoin as a
secondary.

Checks (synchronous replication): every acknowledged key archived exactly once, and nothing
else left; every id read always carried the same key (ids are never reused for another
message); leases held at the crash came back; the worker runs on the new primary and, on the
rejoined old primary, waits as a standby. With asynchronous replication (ha.sh async) the
figures are measured and printed, and only the failover itself is asserted: async may lose
acknowledged sends and give their ids to other messages (Postgres's documented trade-off; the
receipts keep a stale archive from removing such a message)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import psycopg

import pgflow_mq as pgflow
from pgflow_mq import errors

MODE, MULTI, NODE1, NODE2 = sys.argv[1:5]
NODE2_PORT = int(psycopg.conninfo.conninfo_to_dict(NODE2)["port"])
QUEUE = "ha_jobs"
PRODUCERS, CONSUMERS = 3, 3
BEFORE, AFTER = 1500, 1500  # acknowledged sends before the kill, and after the failover


def log(msg: str) -> None:
    print(f"[ha {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    log("FAILED: " + msg)
    sys.exit(1)


acked: dict[str, int] = {}  # key -> the msg_id its acknowledged send returned
seen: dict[int, set[str]] = defaultdict(set)  # msg_id -> keys read under it
archived_by_us: dict[str, int] = defaultdict(int)  # key -> archives that returned it
retries = {"send": 0, "read": 0}
stop_producing = asyncio.Event()
stop_consuming = asyncio.Event()
kill_at: float | None = None
first_ack_after_kill: float | None = None


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    while True:
        try:
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            await asyncio.sleep(0.1)


async def producer(p: int) -> None:
    global first_ack_after_kill
    conn = await connect(MULTI)
    n = 0
    while not stop_producing.is_set():
        key = f"p{p}-{n}"
        while True:
            try:
                acked[key] = await pgflow.AsyncClient(conn).send(QUEUE, {"key": key}, dedup_key=key)
                if first_ack_after_kill is None and conn.info.port == NODE2_PORT:
                    first_ack_after_kill = time.monotonic()
                break
            except errors.PgflowError as e:
                # Not known to be stored (a lost connection, a standby, a fenced primary, an
                # unknown outcome): send again, with the same key, on a fresh connection.
                if e.sqlstate and not e.sqlstate.startswith(("08", "57P", "25")) \
                        and not isinstance(e, errors.OutcomeUnknown):
                    raise
                retries["send"] += 1
                await conn.close()
                conn = await connect(MULTI)
        n += 1
    await conn.close()


async def consumer() -> None:
    conn = await connect(MULTI)
    while True:
        try:
            c = pgflow.AsyncClient(conn)
            got = await c.read(QUEUE, vt=timedelta(seconds=5), qty=10, wait=timedelta(milliseconds=500))
            if not got and stop_consuming.is_set():
                break
            for m in got:
                seen[m.msg_id].add(m.message["key"])
            done = await c.archive(QUEUE, [m.msg_id for m in got], receipts=[m.receipt for m in got])
            for m in got:
                if m.msg_id in done:
                    archived_by_us[m.message["key"]] += 1
        except errors.PgflowError as e:
            # A lost connection, a standby or fenced primary, an unknown outcome: the leases of
            # an unanswered read come back when they run out; reconnect and go on.
            if e.sqlstate and not e.sqlstate.startswith(("08", "57P", "25")) \
                    and not isinstance(e, errors.OutcomeUnknown):
                raise
            retries["read"] += 1
            await conn.close()
            conn = await connect(MULTI)
    await conn.close()


def q1(dsn: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(sql, params).fetchone()
        return None if row is None else row[0]


def until(what: str, cond: Any, seconds: float = 120) -> float:
    start = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except psycopg.Error:
            pass
        if time.monotonic() - start > seconds:
            fail(f"timed out waiting for: {what}")
        time.sleep(0.1)


async def main() -> None:
    global kill_at
    with psycopg.connect(NODE1, autocommit=True) as c:
        pgflow.Client(c).create_queue(QUEUE, visibility_timeout=timedelta(seconds=5),
                                      retry_delay=timedelta(0), retry_jitter=0.0)
    tasks = [asyncio.create_task(producer(p)) for p in range(PRODUCERS)]
    tasks += [asyncio.create_task(consumer()) for _ in range(CONSUMERS)]
    while len(acked) < BEFORE:
        await asyncio.sleep(0.05)
    in_flight = q1(NODE1, "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue USING (queue_id)"
                          " WHERE queue_name = %s AND state = 'l'", QUEUE)
    if q1(os.environ["HA_MONITOR"], "SELECT reportedstate FROM pgautofailover.node"
                                    " WHERE nodename = 'node1'") != "primary":
        fail("node1 is no longer the primary before the kill (a failover on a stall?)")
    log(f"{len(acked)} acknowledged, {in_flight} leased: killing the primary's node")
    kill_at = time.monotonic()
    subprocess.run(["bash", "-c", os.environ["HA_KILL"]], check=True)
    promoted = await asyncio.to_thread(
        until, "node2 promoted and writable",
        lambda: q1(NODE2, "SELECT NOT pg_is_in_recovery() AND NOT current_setting('transaction_read_only')::bool"))
    log(f"node2 writable {promoted:.1f} s after the kill")
    worker = await asyncio.to_thread(
        until, "the worker running on node2",
        lambda: q1(NODE2, "SELECT state = 'running' AND detail IS NULL FROM pgflow.worker_status()"))
    log(f"its worker running (not paused) {worker:.1f} s after that")
    target = len(acked) + AFTER
    while len(acked) < target:
        await asyncio.sleep(0.05)
    stop_producing.set()
    await asyncio.gather(*tasks[:PRODUCERS])
    # Drain: leases held at the crash come back when they run out (5 s), then are archived.
    await asyncio.to_thread(
        until, "the queue drained on node2",
        lambda: q1(NODE2, "SELECT queue_length FROM pgflow.metrics(%s, exact => true)", QUEUE) == 0)
    stop_consuming.set()
    await asyncio.gather(*tasks[PRODUCERS:])
    assert kill_at is not None and first_ack_after_kill is not None

    # The old primary comes back and must rejoin as a secondary, its worker idle.
    subprocess.run(["bash", "-c", os.environ["HA_RESTART"]], check=True)
    rejoined = await asyncio.to_thread(
        until, "node1 rejoined as a secondary",
        lambda: q1(os.environ["HA_MONITOR"],
                   "SELECT reportedstate = 'secondary' FROM pgautofailover.node WHERE nodename = 'node1'"),
        180)
    log(f"node1 rejoined as a secondary {rejoined:.1f} s after its restart")
    if q1(NODE1, "SELECT pg_is_in_recovery()") is not True:
        fail("node1 is not in recovery")
    standby_state = q1(NODE1, "SELECT state FROM pgflow.worker_status()")
    if standby_state != "standby":
        fail(f"node1's worker_status() is {standby_state!r}, not 'standby'")
    # What the new primary kept, by key.
    with psycopg.connect(NODE2, autocommit=True) as c:
        rows = c.execute("SELECT a.message->>'key', a.msg_id, a.read_ct FROM pgflow.archive a"
                         " JOIN pgflow.queue USING (queue_id) WHERE queue_name = %s", (QUEUE,)).fetchall()
    archive: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key, mid, read_ct in rows:
        archive[key].append((mid, read_ct))
    reused = {mid: keys for mid, keys in seen.items() if len(keys) > 1}
    lost = [k for k in acked if k not in archive]
    twice = [k for k, v in archive.items() if len(v) > 1]
    redelivered = sum(1 for v in archive.values() if v[0][1] > 1)
    wrong_id = [k for k, v in archive.items() if k in acked and v[0][0] != acked[k]]
    log(f"figures ({MODE}): {len(acked)} acknowledged sends, {len(lost)} lost, {len(twice)} archived "
        f"twice, {redelivered} redelivered after the crash (leases that came back), "
        f"{len(reused)} ids read with two keys, {retries['send']} send retries, "
        f"node2 writable {promoted:.1f} s after the kill, first acknowledgement by node2 "
        f"{first_ack_after_kill - kill_at:.1f} s after the kill, worker running {worker:.1f} s after promotion, "
        f"node1 rejoined {rejoined:.1f} s after its restart")
    if MODE == "sync":
        if reused:
            fail(f"ids reused for different messages: {dict(list(reused.items())[:5])}")
        if lost:
            fail(f"{len(lost)} acknowledged sends lost: {lost[:5]}")
        if twice:
            fail(f"archived twice: {twice[:5]}")
        if wrong_id:
            fail(f"archived under another id than acknowledged: {wrong_id[:5]}")
        extra = [k for k in archive if k not in acked]
        if extra:
            fail(f"archived but never acknowledged: {extra[:5]}")
    log("ha: all passed")


asyncio.run(main())
