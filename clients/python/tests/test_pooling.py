"""Through PgBouncer in transaction mode: the consumer runtime's long-poll reads, heartbeats,
nacks and archives, the client's calls, and the refusal of a queue with session leases.

tests/cluster/pooling.sh runs this with PGFLOW_POOLED_DSN, a DSN of the pooler in front of the
test server (its pool is smaller than the number of connections used here). Without it, the
tests are skipped: `make test LAYER=pooling` runs them."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgflow_mq as pgflow
from pgflow_mq import errors

POOLED = os.environ.get("PGFLOW_POOLED_DSN")
pytestmark = pytest.mark.skipif(POOLED is None, reason="needs PgBouncer (make test LAYER=pooling)")
DEADLINE = 120.0


def _pooled(dsn: str) -> str:
    assert POOLED is not None
    return psycopg.conninfo.make_conninfo(POOLED, dbname=psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def _one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def test_calls_through_the_pooler(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """psycopg prepares a statement run 5 times unless told not to, and the pooler's next server
    connection would not have it: with prepare_threshold=None, every call works."""
    pgflow.Client(conn).create_queue("py_pooled_calls")
    with psycopg.connect(_pooled(dsn), autocommit=True, prepare_threshold=None) as pc:
        c = pgflow.Client(pc)
        for n in range(20):
            mid = c.send("py_pooled_calls", {"n": n})
            [m] = c.read("py_pooled_calls", qty=1)
            assert m.msg_id == mid
            assert c.archive("py_pooled_calls", [mid], receipts=[m.receipt]) == [mid]


def test_the_consumer_runtime_through_a_transaction_pooler(dsn: str, conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_pooled", retry_delay=timedelta(0), retry_jitter=0.0)
    conn.execute("DROP TABLE IF EXISTS py_pooled_effects")
    conn.execute("CREATE TABLE py_pooled_effects (msg_id bigint)")
    pooled = _pooled(dsn)

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        # A write in the consumer's transaction: it commits with the archive, or not at all.
        await tx.execute("INSERT INTO py_pooled_effects VALUES (%s)", (m.msg_id,))
        kind = m.message["kind"]
        if kind == "fail" and m.read_ct == 1:
            raise RuntimeError("first delivery fails")
        if kind == "slow":
            # Work until the server's clock is 3 s past the first lease's end (the lease is
            # 3 s), checking directly (not through the pooler) that the message stays ours:
            # the heartbeats, sent through the pooler, keep extending its lease.
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as side:
                while True:
                    cur = await side.execute(
                        "SELECT clock_timestamp() > %s + interval '3 s', state, read_ct"
                        "  FROM pgflow.message m JOIN pgflow.queue USING (queue_id)"
                        " WHERE queue_name = 'py_pooled' AND msg_id = %s", (m.vt, m.msg_id))
                    row = await cur.fetchone()
                    assert row is not None and row[1:] == ("l", 1), row
                    if row[0]:
                        break
                    await asyncio.sleep(0.1)

    consumer = pgflow.Consumer(pooled, "py_pooled", handler, workers=3, vt=timedelta(seconds=3),
                               heartbeat=timedelta(milliseconds=300), wait=timedelta(seconds=1),
                               pooled=True)
    kinds = ["ok"] * 10 + ["fail"] * 2 + ["slow"]

    async def go() -> list[int]:
        task = asyncio.create_task(consumer.run(handle_signals=False))
        end = time.monotonic() + DEADLINE
        # The workers' long-polls are waiting in the server before anything is sent, so the
        # sends below wake them (through the pooler, on server connections of its choosing).
        while _one(conn, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                         " AND pid <> pg_backend_pid() AND query LIKE '%%pgflow.read(%%'") == 0:
            assert time.monotonic() < end and not task.done(), "no long-poll ever waited"
            await asyncio.sleep(0.05)
        async with await psycopg.AsyncConnection.connect(pooled, autocommit=True,
                                                         prepare_threshold=None) as pc:
            ids = [await pgflow.AsyncClient(pc).send("py_pooled", {"kind": k}) for k in kinds]
        while consumer.processed < len(kinds):
            assert time.monotonic() < end, f"only {consumer.processed} of {len(kinds)} archived"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        consumer.stop()
        await task
        return ids

    ids = asyncio.run(go())
    archived = dict(conn.execute(
        "SELECT msg_id, read_ct FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)"
        " WHERE queue_name = 'py_pooled'").fetchall())
    assert sorted(archived) == sorted(ids), "every message archived once"
    expected = {i: (2 if k == "fail" else 1) for i, k in zip(ids, kinds)}
    assert archived == expected, "failures retried once, the slow one kept its lease"
    assert consumer.failed == 2
    # The failed deliveries' writes rolled back with them: one write per archived message.
    effects = [r[0] for r in conn.execute("SELECT msg_id FROM py_pooled_effects ORDER BY 1")]
    assert effects == sorted(ids)
    assert _one(conn, "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue USING (queue_id)"
                      " WHERE queue_name = 'py_pooled'") == 0


def test_a_queue_with_session_leases_is_refused_under_pooling(dsn: str,
                                                               conn: psycopg.Connection[Any]) -> None:
    pgflow.Client(conn).create_queue("py_pooled_session", session_leases=True)

    async def handler(m: pgflow.Message, tx: psycopg.AsyncConnection[Any]) -> None:
        raise AssertionError("nothing may be consumed")

    consumer = pgflow.Consumer(_pooled(dsn), "py_pooled_session", handler, pooled=True)
    with pytest.raises(errors.FeatureNotSupported) as e:
        asyncio.run(consumer.run(handle_signals=False))
    assert "session_leases" in str(e.value) and e.value.sqlstate == "0A000"
