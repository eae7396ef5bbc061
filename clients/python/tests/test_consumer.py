"""The asyncio client and the consumer runtime, against a real server. Every wait is bounded and
polls the server's own state; no assertion compares a client clock with a server time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable

import psycopg
import pytest

import pgflow_mq as pgflow
from pgflow_mq import errors

DEADLINE = 60.0


def until(what: str, cond: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


async def until_async(what: str, cond: Callable[[], Awaitable[bool]]) -> None:
    end = time.monotonic() + DEADLINE
    while not await cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def test_async_client(dsn: str) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            c = pgflow.AsyncClient(conn)
            assert await c.create_queue("py_async")
            ids = await c.send_batch("py_async", [{"n": 1}, {"n": 2}])
            got = await c.read("py_async", qty=5)
            assert [m.msg_id for m in got] == ids
            assert await c.archive("py_async", ids) == ids
            # a long-poll read returns as soon as a send commits
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
                waiting = asyncio.create_task(c.read("py_async", wait=timedelta(seconds=30)))
                await until_async("the reader waiting", lambda: _waiting(other))
                sent = await pgflow.AsyncClient(other).send("py_async", {"n": 3})
                assert [m.msg_id for m in await waiting] == [sent]
            with pytest.raises(errors.QueueNotFound):
                await c.metrics("py_async_none")
            assert await c.drop_queue("py_async")

    asyncio.run(go())


async def _waiting(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%pgflow.read(%wait =>%'"
        " AND pid <> pg_backend_pid() AND state = 'active'")
    row = await cur.fetchone()
    return bool(row and row[0])


def _consume(dsn: str, queue: str, handler: pgflow.Handler, stop_when: Callable[[pgflow.Consumer], bool],
             **kw: Any) -> pgflow.Consumer:
    """Runs a Consumer until stop_when(consumer) holds (checked every 50 ms), then stops it."""
    consumer = pgflow.Consumer(dsn, queue, handler, wait=timedelta(milliseconds=200), **kw)

    async def go() -> None:
        task = asyncio.create_task(consumer.run(handle_signals=False))
        end = time.monotonic() + DEADLINE
        while not stop_when(consumer):
            assert time.monotonic() < end, "the consumer never got there"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        consumer.stop()
        await task

    asyncio.run(go())
    return consumer


def test_outcomes_archive_nack_retry_and_timeout(dsn: str, conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_outcomes", retry_delay=timedelta(hours=1), retry_jitter=0.0)
    conn.execute("DROP TABLE IF EXISTS py_effects")
    conn.execute("CREATE TABLE py_effects (n int)")
    ok, fail, retry, slow = (c.send("py_outcomes", {"kind": k}) for k in ("ok", "fail", "retry", "slow"))

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> pgflow.Retry | None:
        # The handler's own write, in the transaction the archive commits in.
        await tx.execute("INSERT INTO py_effects VALUES (%s)", (m.msg_id,))
        kind = m.message["kind"]
        if kind == "fail":
            raise RuntimeError("it broke")
        if kind == "retry":
            return pgflow.Retry(timedelta(minutes=10))
        if kind == "slow":
            await asyncio.sleep(3600)
        return None

    consumer = _consume(dsn, "py_outcomes", handler, lambda k: k.processed + k.failed == 4,
                        handler_timeout=timedelta(seconds=3))
    assert (consumer.processed, consumer.failed) == (1, 3)
    # Only the archived message's write committed.
    assert [r[0] for r in conn.execute("SELECT n FROM py_effects").fetchall()] == [ok]
    assert one(conn, "SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)"
                     " WHERE queue_name = 'py_outcomes' AND msg_id = %s", ok) == 1
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT msg_id, state, errors -> -1 ->> 'error', vt - (errors -> -1 ->> 'at')::timestamptz"
        "  FROM pgflow.message m JOIN pgflow.queue USING (queue_id) WHERE queue_name = 'py_outcomes'")}
    assert rows[fail][:2] == ("d", "RuntimeError: it broke")
    assert rows[fail][2] == timedelta(hours=1)  # the queue's policy
    assert rows[retry] == ("d", "retry requested by the handler", timedelta(minutes=10))
    assert rows[slow][0] == "d" and rows[slow][1].startswith("handler timed out")
    c.drop_queue("py_outcomes")


def test_workers_run_concurrently_and_each_message_is_archived_once(
        dsn: str, conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_workers")
    c.send_batch("py_workers", [{"n": i} for i in range(40)])
    barrier = asyncio.Barrier(4)
    seen: list[int] = []

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        if m.message["n"] < 4:
            # The first four wait for each other: only four workers at once get through.
            await asyncio.wait_for(barrier.wait(), DEADLINE)
        seen.append(m.msg_id)
        return None

    # The barrier belongs to the loop that runs the consumer.
    def run() -> pgflow.Consumer:
        return _consume(dsn, "py_workers", handler, lambda k: k.processed == 40, workers=4)

    consumer = run()
    assert consumer.failed == 0 and len(seen) == 40 and len(set(seen)) == 40
    assert one(conn, "SELECT archived FROM pgflow.metrics('py_workers', exact => true)") == 40
    c.drop_queue("py_workers")


def test_a_batch_ends_with_one_archive_read(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """The last message of each batch is archived by the call that leases the next batch."""
    c = pgflow.Client(conn)
    c.create_queue("py_batches")
    c.send_batch("py_batches", [{"n": i} for i in range(20)])

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        return None

    # The consumer's sessions count their calls of pgflow's functions (a superuser setting).
    counted = psycopg.conninfo.make_conninfo(dsn, options="-c track_functions=all")
    consumer = _consume(counted, "py_batches", handler, lambda k: k.processed == 20, batch=5)
    assert (consumer.processed, consumer.failed) == (20, 0)

    def calls() -> dict[str, int]:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return dict(conn.execute(
            "SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'pgflow'"
            " AND funcname IN ('read', 'archive', 'archive_read')").fetchall())

    # 4 batches of 5: each batch's first four are archived alone (each in its handler's
    # transaction), the fifth with the lease of the next batch (the last one finds none).
    # The sessions' counts reach the server when they end.
    until("the consumer's function counts", lambda: calls().get("archive_read") == 4
          and calls().get("archive") == 16)
    assert calls()["read"] >= 1
    assert one(conn, "SELECT archived FROM pgflow.metrics('py_batches', exact => true)") == 20
    c.drop_queue("py_batches")


def test_heartbeats_keep_a_slow_handlers_lease(dsn: str, conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_beat")
    mid = c.send("py_beat", {})

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        # Work until the server's clock is 3 s past the first lease's end (the lease is 3 s),
        # checking on another connection that the message is still ours (read_ct 1, leased).
        first_vt = m.vt
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as side:
            while True:
                cur = await side.execute(
                    "SELECT clock_timestamp() > %s + interval '3 s', state, read_ct"
                    "  FROM pgflow.message m JOIN pgflow.queue USING (queue_id)"
                    " WHERE queue_name = 'py_beat' AND msg_id = %s", (first_vt, m.msg_id))
                row = await cur.fetchone()
                assert row is not None and row[1:] == ("l", 1), row
                if row[0]:
                    return None
                await asyncio.sleep(0.1)

    consumer = _consume(dsn, "py_beat", handler, lambda k: k.processed + k.failed == 1,
                        vt=timedelta(seconds=3), heartbeat=timedelta(milliseconds=300))
    assert (consumer.processed, consumer.failed) == (1, 0)
    assert one(conn, "SELECT read_ct FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)"
                     " WHERE queue_name = 'py_beat' AND msg_id = %s", mid) == 1
    c.drop_queue("py_beat")


SCRIPT = """
import asyncio, sys, pathlib
from datetime import timedelta
import pgflow_mq as pgflow

dsn, flag = sys.argv[1], pathlib.Path(sys.argv[2])

async def handler(m, tx):
    (flag / "started").touch()
    while not (flag / "go").exists():
        await asyncio.sleep(0.05)

asyncio.run(pgflow.Consumer(dsn, "py_term", handler, workers=2,
                            wait=timedelta(seconds=30)).run())
"""


def test_sigterm_drains_in_flight_work(dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_term")
    first = c.send("py_term", {})
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, dsn, str(tmp_path)])
    try:
        until("the handler started", lambda: (tmp_path / "started").exists())
        # The other worker waits in a long-poll; SIGTERM cancels it and lets the handler finish.
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert proc.poll() is None, "exited with a message in flight"
        later = c.send("py_term", {})
        (tmp_path / "go").touch()
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert one(conn, "SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)"
                     " WHERE queue_name = 'py_term' AND msg_id = %s", first) == 1
    # What arrived after the stop was not handled: it is deliverable (a read that took it
    # before the cancel reached the server gives it straight back).
    assert one(conn, "SELECT state FROM pgflow.message m JOIN pgflow.queue USING (queue_id)"
                     " WHERE queue_name = 'py_term' AND msg_id = %s", later) == "r"
    c.drop_queue("py_term")


KILLED = """
import asyncio, sys, pathlib
from datetime import timedelta
import pgflow_mq as pgflow

dsn, flag = sys.argv[1], pathlib.Path(sys.argv[2])

async def handler(m, tx):
    (flag / "started").touch()
    await asyncio.sleep(3600)   # until the process is killed

asyncio.run(pgflow.Consumer(dsn, "py_killed", handler, vt=timedelta(hours=1)).run())
"""


def test_a_killed_workers_message_comes_back_and_is_processed_once(
        dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    c = pgflow.Client(conn)
    # Session leases: the lease ends with its reader's session, not after the hour's lease.
    c.create_queue("py_killed", session_leases=True, retry_delay=timedelta(0))
    mid = c.send("py_killed", {"job": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED, dsn, str(tmp_path)])
    try:
        until("the handler started", lambda: (tmp_path / "started").exists())
    finally:
        proc.kill()  # SIGKILL: no drain, no nack; the kernel closes its connections
        proc.wait(DEADLINE)
    seen: list[tuple[int, int]] = []

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        seen.append((m.msg_id, m.read_ct))

    # The server's worker gives the lease back (a failed delivery: read_ct 2 on the next read).
    consumer = _consume(dsn, "py_killed", handler, lambda k: k.processed == 1)
    assert seen == [(mid, 2)] and consumer.failed == 0
    assert one(conn, "SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)"
                     " WHERE queue_name = 'py_killed' AND msg_id = %s", mid) == 1
    assert one(conn, "SELECT queue_length FROM pgflow.metrics('py_killed', exact => true)") == 0
    c.drop_queue("py_killed")


def test_failures_retries_and_dead_letters_are_logged_and_reported(
        dsn: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_loud", max_retries=1, retry_delay=timedelta(0), retry_jitter=0.0)
    mid = c.send("py_loud", {"proposal_id": "p-1"})
    events: list[pgflow.ConsumerEvent] = []

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        raise KeyError("proposal_id")

    with caplog.at_level("WARNING", logger="pgflow_mq.consumer"):
        _consume(dsn, "py_loud", handler, lambda k: any(e.kind == "dead_lettered" for e in events),
                 on_event=events.append)
    assert [(e.kind, e.msg_id, e.read_ct) for e in events] == [
        ("failed", mid, 1), ("retried", mid, 1), ("failed", mid, 2), ("dead_lettered", mid, 2)]
    assert all(e.queue == "py_loud" and e.reason == "KeyError: 'proposal_id'" for e in events)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", f"message {mid} of py_loud (read_ct 1) failed: KeyError: 'proposal_id'; "
                       f"retried at {events[1].retry_at}") in lines
    assert ("ERROR", f"message {mid} of py_loud (read_ct 2) failed: KeyError: 'proposal_id'; "
                     "dead-lettered") in lines
    assert one(conn, "SELECT count(*) FROM pgflow.dlq_list('py_loud')") == 1
    c.drop_queue("py_loud")


def test_a_handler_of_the_wrong_shape_is_refused_at_start() -> None:
    async def one_arg(m: pgflow.Message) -> None:
        return None

    def not_async(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        return None

    class Callable2:
        async def __call__(self, m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
            return None

    with pytest.raises(TypeError, match="two arguments"):
        pgflow.Consumer("", "q", one_arg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        pgflow.Consumer("", "q", not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        pgflow.Consumer("", "q", "handler")  # type: ignore[arg-type]
    pgflow.Consumer("", "q", Callable2())


def test_the_runtime_refuses_bad_settings() -> None:
    async def h(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        return None

    with pytest.raises(ValueError):
        pgflow.Consumer("", "q", h, workers=0)
    with pytest.raises(ValueError):
        pgflow.Consumer("", "q", h, vt=timedelta(0))
    assert os.environ.get("PGFLOW_TEST_DSN")
