"""The sync client: every verb against a real server, and the error classes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgflow_mq as pgflow
from pgflow_mq import errors


def test_queue_admin_and_the_message_cycle(conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    assert c.create_queue("py_cycle", max_retries=1, retry_delay=timedelta(0), retry_jitter=0.0,
                          alert_dlq=5, session_leases=True)
    assert c.create_queue("py_cycle", if_not_exists=True) is False
    info = {q["queue_name"]: q for q in c.list_queues()}["py_cycle"]
    assert (info["max_retries"], info["alert_dlq"], info["session_leases"]) == (1, 5, True)
    altered = c.alter_queue("py_cycle", visibility_timeout=timedelta(seconds=7), alert_dlq=-1)
    assert altered is not None
    assert (altered["visibility_timeout"], altered["alert_dlq"]) == (timedelta(seconds=7), None)

    first = c.send("py_cycle", {"n": 1}, headers={"trace": "a"}, priority=5)
    batch = c.send_batch("py_cycle", [{"n": 2}, {"n": 3}], headers=[None, {"h": 1}])
    assert len(batch) == 2 and first not in batch
    pending = c.list_pending("py_cycle")
    assert [p["msg_id"] for p in pending][0] == first  # priority 5 first

    got = c.read("py_cycle", vt=timedelta(seconds=30), qty=2)
    assert [m.msg_id for m in got] == [first, batch[0]]
    assert got[0].message == {"n": 1} and got[0].headers == {"trace": "a"} and got[0].read_ct == 1
    # archive the first and lease the last in one round trip
    nxt = c.archive_read("py_cycle", [first], qty=5)
    assert [m.msg_id for m in nxt] == [batch[1]]
    assert c.archive("py_cycle", []) == []
    assert c.delete("py_cycle", [batch[1]]) == [batch[1]]
    assert c.set_vt("py_cycle", batch[0], timedelta(seconds=60)) is not None

    # a failure, then the dead-letter queue
    r = c.nack("py_cycle", batch[0], error="boom", read_ct=1)
    assert r is not None and r.outcome == "retry" and r.read_ct == 1
    again = c.read("py_cycle")
    assert [m.msg_id for m in again] == [batch[0]] and again[0].read_ct == 2
    r = c.nack("py_cycle", batch[0], error="boom again")
    assert r is not None and r.outcome == "dead" and r.retry_at is None
    dead = c.dlq_list("py_cycle")
    assert [d["msg_id"] for d in dead] == [batch[0]] and dead[0]["last_error"] == "boom again"
    assert any(d["queue_name"] == "py_cycle" for d in c.dlq_list_all())
    redriven = c.dlq_retry("py_cycle", [batch[0]])
    assert len(redriven) == 1 and redriven[0]["dead_msg_id"] == batch[0]
    popped = c.pop("py_cycle")
    assert popped[0].msg_id == redriven[0]["msg_id"]
    assert c.dlq_delete("py_cycle", [12345]) == []
    assert c.dlq_purge("py_cycle") == 0
    assert len(c.retry_schedule("py_cycle")) >= 1

    m = c.metrics("py_cycle", exact=True)
    assert m is not None and m["queue_length"] == 0 and m["exact"] is True
    assert any(x["queue_name"] == "py_cycle" for x in c.metrics_all())
    assert c.stats_reset("py_cycle") == 1
    assert "pgflow_queue_messages" in c.metrics_text()
    assert isinstance(c.alerts(), list) and isinstance(c.horizon(), list)
    assert {r["job"] for r in c.maintain()} >= {"expire_leases", "prune_archive"}
    c.send("py_cycle", {"n": 4})
    assert c.purge_queue("py_cycle") == 1
    assert c.drop_queue("py_cycle") is True
    assert c.drop_queue("py_cycle", if_exists=True) is False


def test_contracts_topics_and_grants(conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_topics")
    c.set_contract("py_topics", {"type": "object", "required": ["n"]})
    assert [v["version"] for v in c.list_contracts("py_topics")] == ["1"]
    with pytest.raises(errors.ContractViolation) as e:
        c.send("py_topics", {"m": 1})
    assert e.value.sqlstate == "23514"
    assert c.bind("py.#", "py_topics") is True
    assert any(b["pattern"] == "py.#" for b in c.list_bindings())
    out = c.publish("py.created", {"n": 1})
    assert [r["queue_name"] for r in out] == ["py_topics"]
    assert c.unbind("py.#", "py_topics") is True
    c.set_contract("py_topics", {"type": "object"}, version="2")
    assert c.drop_contract("py_topics", "1") is True
    conn.execute("DROP ROLE IF EXISTS py_worker")
    conn.execute("CREATE ROLE py_worker")
    assert c.grant("py_topics", "py_worker", "consume") is True
    assert [g["privilege"] for g in c.list_grants("py_topics")] == ["consume"]
    assert c.revoke("py_topics", "py_worker") == 1
    c.drop_queue("py_topics")
    conn.execute("DROP ROLE py_worker")


def test_errors_keep_their_sqlstate(conn: psycopg.Connection[Any]) -> None:
    c = pgflow.Client(conn)
    c.create_queue("py_err")
    cases: list[tuple[type[pgflow.PgflowError], str, Any]] = [
        (errors.QueueNotFound, "42704", lambda: c.send("py_no_such_queue", {})),
        (errors.QueueExists, "42710", lambda: c.create_queue("py_err")),
        (errors.InvalidArgument, "22023", lambda: c.read("py_err", qty=0)),
        (errors.NullArgument, "22004", lambda: c.dlq_delete("py_err", None)),  # type: ignore[arg-type]
        (errors.InvalidArgument, "22023", lambda: c.send("py_err", [1])),  # type: ignore[arg-type]
    ]
    for cls, state, f in cases:
        with pytest.raises(cls) as e:
            f()
        assert e.value.sqlstate == state and isinstance(e.value.__cause__, psycopg.Error)
    # a nack naming a stale read_ct: the lease was lost
    mid = c.send("py_err", {})
    c.read("py_err")
    with pytest.raises(errors.LeaseLost):
        c.nack("py_err", mid, read_ct=7)
    # a long-poll outside READ COMMITTED
    with pytest.raises(errors.FeatureNotSupported):
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            c.read("py_err", wait=timedelta(milliseconds=10))
    c.drop_queue("py_err")


def test_send_commits_with_the_callers_transaction(dsn: str) -> None:
    with psycopg.connect(dsn) as tx, psycopg.connect(dsn, autocommit=True) as other:
        c, o = pgflow.Client(tx), pgflow.Client(other)
        o.create_queue("py_tx")
        c.send("py_tx", {"n": 1})
        assert o.read("py_tx") == []  # not committed yet
        tx.rollback()
        assert o.read("py_tx") == []
        c.send("py_tx", {"n": 2})
        tx.commit()
        assert [m.message for m in o.read("py_tx")] == [{"n": 2}]
        o.drop_queue("py_tx")


def test_receipts_name_the_delivery(conn: psycopg.Connection[Any]) -> None:
    """A stale receipt (the lease was handed back and the message read again) archives,
    deletes, extends and nacks nothing; the current one does."""
    c = pgflow.Client(conn)
    c.create_queue("py_receipts", retry_delay=timedelta(0), retry_jitter=0.0)
    mid = c.send("py_receipts", {"n": 1})
    first = c.read("py_receipts")[0]
    c.set_vt("py_receipts", mid, timedelta(0), receipt=first.receipt)  # handed back
    second = c.read("py_receipts")[0]
    assert (second.msg_id, second.read_ct) == (mid, 2) and second.receipt != first.receipt
    assert c.archive("py_receipts", [mid], receipts=[first.receipt]) == []
    assert c.delete("py_receipts", [mid], receipts=[first.receipt]) == []
    with pytest.raises(errors.LeaseLost):
        c.set_vt("py_receipts", mid, timedelta(seconds=60), receipt=first.receipt)
    with pytest.raises(errors.LeaseLost):
        c.nack("py_receipts", mid, error="late", receipt=first.receipt)
    assert c.archive_read("py_receipts", [mid], receipts=[first.receipt]) == []
    with pytest.raises(errors.InvalidArgument):
        c.archive("py_receipts", [mid], receipts=[1, 2])
    row = c.set_vt("py_receipts", mid, timedelta(seconds=60), receipt=second.receipt)
    assert row is not None and row["receipt"] == second.receipt
    assert c.archive("py_receipts", [mid], receipts=[second.receipt]) == [mid]


def _setting_reaches(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    """Waits until this session has applied a reloaded setting (a SIGHUP is processed between
    statements), up to 100 s."""
    for _ in range(10000):
        if conn.execute("SELECT current_setting(%s)", (name,)).fetchone() == (value,):
            return
        time.sleep(0.01)
    raise AssertionError(f"{name} never became {value!r}")


# A commit waits for the synchronous standby only if its transaction has an xid and wrote WAL:
# a transactional logical message does both, and touches no table.
_PROBE = "SELECT pg_logical_emit_message(true, 'pgflow-test', 'probe')"


def _commits_wait_for_the_standby(dsn: str) -> None:
    """Waits until commits really wait for the synchronous standby. A session sees a reloaded
    synchronous_standby_names before commits wait on it: they skip the wait until the
    checkpointer has processed the reload as well (WalSndCtl->sync_standbys_defined). A probe
    commit either finishes at once (too early: try again) or waits, shown by its own wait
    event, and is cancelled."""
    for _ in range(10000):
        with psycopg.connect(dsn, autocommit=True) as probe, \
                psycopg.connect(dsn, autocommit=True) as watch:
            pid = probe.info.backend_pid
            t = threading.Thread(target=lambda: probe.execute(_PROBE))
            t.start()
            waited = False
            while t.is_alive() and not waited:
                waited = watch.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone() == ("SyncRep",)
                time.sleep(0.01)
            if waited:
                watch.execute("SELECT pg_cancel_backend(%s)", (pid,))
            t.join()
            if waited:
                return
    raise AssertionError("commits never waited for the synchronous standby")


def test_a_cancelled_wait_for_the_synchronous_standby_is_an_unknown_outcome(
        conn: psycopg.Connection[Any], dsn: str) -> None:
    """The server commits locally, warns, and returns the id: the client raises OutcomeUnknown
    instead, and a retry with the same dedup_key delivers the message once."""
    c = pgflow.Client(conn)
    c.create_queue("py_syncrep")
    admin = psycopg.connect(dsn, autocommit=True)
    try:
        # A synchronous standby that never connects: every commit waits for it (the suite's
        # layers run one after another, so nobody else is held up meanwhile).
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        admin.execute("SELECT pg_reload_conf()")
        _setting_reaches(conn, "synchronous_standby_names", "nobody")
        _commits_wait_for_the_standby(dsn)
        me = conn.info.backend_pid
        outcome: list[BaseException | int] = []

        def send() -> None:
            try:
                outcome.append(c.send("py_syncrep", {"n": 1}, dedup_key="order-1"))
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                outcome.append(e)

        t = threading.Thread(target=send)
        t.start()
        # Cancel the wait once the server shows it (its own wait event), not after a delay.
        while t.is_alive() and admin.execute(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (me,)).fetchone() != ("SyncRep",):
            time.sleep(0.01)
        admin.execute("SELECT pg_cancel_backend(%s)", (me,))
        t.join()
        assert len(outcome) == 1 and isinstance(outcome[0], errors.OutcomeUnknown), outcome
        assert "synchronous replication" in str(outcome[0])
        assert outcome[0].detail is not None and "committed locally" in outcome[0].detail
    finally:
        admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
        admin.close()
    _setting_reaches(conn, "synchronous_standby_names", "")
    # The producer's retry with the same key: no second message.
    again = c.send("py_syncrep", {"n": 1}, dedup_key="order-1")
    assert [m.msg_id for m in c.read("py_syncrep", qty=10)] == [again]
