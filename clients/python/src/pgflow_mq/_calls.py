"""Every verb as one static SQL call: the text, its parameters, and how to read its rows.

The sync and the asyncio clients share these builders and differ only in how they execute a
:class:`Call`. SQL text is made only from this module's own literals (function names and the
named-argument names listed here); every value, queue names included, is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

from psycopg.types.json import Jsonb

T = TypeVar("T")
Row = dict[str, Any]
JsonObject = Mapping[str, Any]


@dataclass(frozen=True)
class Message:
    """A leased (or popped) message, as ``read``, ``archive_read`` and ``pop`` return it."""

    msg_id: int
    read_ct: int
    enqueued_at: datetime
    vt: datetime
    message: dict[str, Any]
    headers: dict[str, Any] | None
    #: This delivery's lease receipt: pass it to ``archive``, ``archive_read``, ``delete``,
    #: ``set_vt`` and ``nack`` so that they act on this delivery only, never on a later one
    #: (the lease ran out and another consumer has the message) or on another message given the
    #: same id after a failover.
    receipt: int


@dataclass(frozen=True)
class NackResult:
    """What a ``nack`` did: ``outcome`` is ``"retry"`` (again at ``retry_at``) or ``"dead"``."""

    msg_id: int
    outcome: str
    read_ct: int
    retry_at: datetime | None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One statement and the conversion of its rows (as dicts) into the verb's result."""

    sql: str
    params: tuple[Any, ...]
    convert: Callable[[list[Row]], T]


def _json(v: JsonObject | None) -> Jsonb | None:
    # Whatever JSON it is: the server checks that it is an object (22023 if not).
    return None if v is None else Jsonb(v)


def _ids(v: Sequence[int] | None) -> list[int] | None:
    # None reaches the server, which refuses it with 22004.
    return None if v is None else list(v)


_CASTS = frozenset({"bigint", "bigint[]", "jsonb[]", "regrole"})


def _call(fn: str, args: Sequence[Any], named: Mapping[str, Any], convert: Callable[[list[Row]], T],
          casts: Mapping[int | str, str] | None = None) -> Call[T]:
    """``SELECT * FROM pgflow.fn($1, ..., name => $n, ...)``; named arguments that are None
    are left out, so the server's default applies (for ``alter_queue``: unchanged). ``casts``
    names the SQL type of an argument (by position or name) where Python's own would be
    ambiguous: an empty list of ids, a list of JSON objects, a role name."""
    casts = casts or {}
    assert fn.isidentifier() and set(casts.values()) <= _CASTS  # our own literals only

    def slot(key: int | str) -> str:
        return f"%s::{casts[key]}" if key in casts else "%s"

    parts = [slot(i) for i in range(len(args))]
    params = list(args)
    for name, value in named.items():
        if value is None:
            continue
        assert name.isidentifier(), name
        parts.append(f"{name} => {slot(name)}")
        params.append(value)
    return Call(f"SELECT * FROM pgflow.{fn}({', '.join(parts)})", tuple(params), convert)


def _scalar(rows: list[Row]) -> Any:
    return next(iter(rows[0].values())) if rows else None


def _column(rows: list[Row]) -> list[Any]:
    return [next(iter(r.values())) for r in rows]


def _rows(rows: list[Row]) -> list[Row]:
    return rows


def _none(rows: list[Row]) -> None:
    return None


def _messages(rows: list[Row]) -> list[Message]:
    return [Message(**r) for r in rows]


def _first(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


# --- Queues ----------------------------------------------------------------------------------

def create_queue(queue: str, *, if_not_exists: bool = False, visibility_timeout: timedelta | None = None,
                 max_retries: int | None = None, retry_delay: timedelta | None = None,
                 retry_backoff: float | None = None, retry_delay_max: timedelta | None = None,
                 retry_jitter: float | None = None, archive_retention: timedelta | None = None,
                 default_priority: int | None = None, dedup_window: timedelta | None = None,
                 notify: bool | None = None, contract: JsonObject | None = None,
                 alert_dlq: int | None = None, alert_age: timedelta | None = None,
                 alert_depth: int | None = None, session_leases: bool | None = None) -> Call[bool]:
    return _call("create_queue", [queue], dict(
        if_not_exists=if_not_exists, visibility_timeout=visibility_timeout, max_retries=max_retries,
        retry_delay=retry_delay, retry_backoff=retry_backoff, retry_delay_max=retry_delay_max,
        retry_jitter=retry_jitter, archive_retention=archive_retention,
        default_priority=default_priority, dedup_window=dedup_window, notify=notify,
        contract=_json(contract), alert_dlq=alert_dlq, alert_age=alert_age,
        alert_depth=alert_depth, session_leases=session_leases), _scalar)


def alter_queue(queue: str, *, visibility_timeout: timedelta | None = None,
                max_retries: int | None = None, retry_delay: timedelta | None = None,
                retry_backoff: float | None = None, retry_delay_max: timedelta | None = None,
                retry_jitter: float | None = None, archive_retention: timedelta | None = None,
                default_priority: int | None = None, dedup_window: timedelta | None = None,
                notify: bool | None = None, contract: JsonObject | None = None,
                alert_dlq: int | None = None, alert_age: timedelta | None = None,
                alert_depth: int | None = None, session_leases: bool | None = None) -> Call[Row | None]:
    return _call("alter_queue", [queue], dict(
        visibility_timeout=visibility_timeout, max_retries=max_retries, retry_delay=retry_delay,
        retry_backoff=retry_backoff, retry_delay_max=retry_delay_max, retry_jitter=retry_jitter,
        archive_retention=archive_retention, default_priority=default_priority,
        dedup_window=dedup_window, notify=notify, contract=_json(contract), alert_dlq=alert_dlq,
        alert_age=alert_age, alert_depth=alert_depth, session_leases=session_leases), _first)


def list_queues() -> Call[list[Row]]:
    return _call("list_queues", [], {}, _rows)


def drop_queue(queue: str, *, if_exists: bool = False) -> Call[bool]:
    return _call("drop_queue", [queue], dict(if_exists=if_exists), _scalar)


def purge_queue(queue: str) -> Call[int]:
    return _call("purge_queue", [queue], {}, _scalar)


# --- Producing -------------------------------------------------------------------------------

def send(queue: str, message: JsonObject, *, headers: JsonObject | None = None,
         delay: timedelta | None = None, priority: int | None = None, group_key: str | None = None,
         dedup_key: str | None = None, deliver_at: datetime | None = None) -> Call[int]:
    return _call("send", [queue, _json(message)], dict(
        headers=_json(headers), delay=delay, priority=priority, group_key=group_key,
        dedup_key=dedup_key, deliver_at=deliver_at), _scalar)


def send_batch(queue: str, messages: Sequence[JsonObject], *,
               headers: Sequence[JsonObject | None] | None = None, delay: timedelta | None = None,
               priority: int | None = None) -> Call[list[int]]:
    return _call("send_batch", [queue, [_json(m) for m in messages]], dict(
        headers=None if headers is None else [_json(h) for h in headers], delay=delay,
        priority=priority), _column, {1: "jsonb[]", "headers": "jsonb[]"})


def publish(topic: str, message: JsonObject, *, headers: JsonObject | None = None,
            delay: timedelta | None = None, priority: int | None = None) -> Call[list[Row]]:
    return _call("publish", [topic, _json(message)], dict(
        headers=_json(headers), delay=delay, priority=priority), _rows)


# --- Consuming -------------------------------------------------------------------------------

def read(queue: str, *, vt: timedelta | None = None, qty: int = 1,
         wait: timedelta | None = None) -> Call[list[Message]]:
    return _call("read", [queue], dict(vt=vt, qty=qty, wait=wait), _messages)


def archive_read(queue: str, done: Sequence[int], *, vt: timedelta | None = None, qty: int = 1,
                 wait: timedelta | None = None,
                 receipts: Sequence[int] | None = None) -> Call[list[Message]]:
    return _call("archive_read", [queue, _ids(done)],
                 dict(vt=vt, qty=qty, wait=wait, receipts=_ids(receipts)), _messages,
                 {1: "bigint[]", "receipts": "bigint[]"})


def pop(queue: str, *, qty: int = 1) -> Call[list[Message]]:
    return _call("pop", [queue], dict(qty=qty), _messages)


def archive(queue: str, msg_ids: Sequence[int], *,
            receipts: Sequence[int] | None = None) -> Call[list[int]]:
    """The ids archived. With ``receipts`` (one per id), an id whose delivery is no longer the
    one its receipt names is skipped."""
    return _call("archive", [queue, _ids(msg_ids)], dict(receipts=_ids(receipts)), _column,
                 {1: "bigint[]", "receipts": "bigint[]"})


def delete(queue: str, msg_ids: Sequence[int], *,
           receipts: Sequence[int] | None = None) -> Call[list[int]]:
    return _call("delete", [queue, _ids(msg_ids)], dict(receipts=_ids(receipts)), _column,
                 {1: "bigint[]", "receipts": "bigint[]"})


def set_vt(queue: str, msg_id: int, vt: timedelta, *,
           receipt: int | None = None) -> Call[Row | None]:
    """With ``receipt``, a lease lost meanwhile raises :class:`LeaseLost` and changes nothing."""
    return _call("set_vt", [queue, msg_id, vt], dict(receipt=receipt), _first,
                 {"receipt": "bigint"})


def nack(queue: str, msg_id: int, *, error: str | None = None, retry_after: timedelta | None = None,
         read_ct: int | None = None, receipt: int | None = None) -> Call[NackResult | None]:
    def convert(rows: list[Row]) -> NackResult | None:
        return NackResult(**rows[0]) if rows else None

    return _call("nack", [queue, msg_id], dict(error=error, retry_after=retry_after,
                                               read_ct=read_ct, receipt=receipt), convert,
                 {"receipt": "bigint"})


# --- Dead letters ----------------------------------------------------------------------------

def dlq_list(queue: str, *, qty: int = 100) -> Call[list[Row]]:
    return _call("dlq_list", [queue], dict(qty=qty), _rows)


def dlq_list_all(*, qty: int = 100) -> Call[list[Row]]:
    return _call("dlq_list_all", [], dict(qty=qty), _rows)


def dlq_retry(queue: str, msg_ids: Sequence[int] | None = None, *,
              died_before: datetime | None = None) -> Call[list[Row]]:
    return _call("dlq_retry", [queue], dict(
        msg_ids=_ids(msg_ids), died_before=died_before), _rows,
        {"msg_ids": "bigint[]"})


def dlq_delete(queue: str, msg_ids: Sequence[int]) -> Call[list[int]]:
    return _call("dlq_delete", [queue, _ids(msg_ids)], {}, _column, {1: "bigint[]"})


def dlq_purge(queue: str, *, older_than: datetime | None = None) -> Call[int]:
    return _call("dlq_purge", [queue], dict(older_than=older_than), _scalar)


def retry_schedule(queue: str) -> Call[list[Row]]:
    return _call("retry_schedule", [queue], {}, _rows)


# --- Observing -------------------------------------------------------------------------------

def metrics(queue: str, *, exact: bool = False) -> Call[Row | None]:
    return _call("metrics", [queue], dict(exact=exact), _first)


def metrics_all(*, exact: bool = False) -> Call[list[Row]]:
    return _call("metrics_all", [], dict(exact=exact), _rows)


def list_pending(queue: str, *, qty: int = 100) -> Call[list[Row]]:
    return _call("list_pending", [queue], dict(qty=qty), _rows)


def alerts() -> Call[list[Row]]:
    return _call("alerts", [], {}, _rows)


def stats_reset(queue: str | None = None) -> Call[int]:
    return _call("stats_reset", [] if queue is None else [queue], {}, _scalar)


def metrics_text() -> Call[str]:
    return _call("metrics_text", [], {}, _scalar)


def horizon() -> Call[list[Row]]:
    return _call("horizon", [], {}, _rows)


def maintain() -> Call[list[Row]]:
    return _call("maintain", [], {}, _rows)


# --- Contracts, topics, grants ---------------------------------------------------------------

def set_contract(queue: str, contract: JsonObject, *, version: str = "1",
                 make_default: bool = True) -> Call[None]:
    return _call("set_contract", [queue, _json(contract)], dict(version=version,
                                                               make_default=make_default), _none)


def drop_contract(queue: str, version: str) -> Call[bool]:
    return _call("drop_contract", [queue, version], {}, _scalar)


def list_contracts(queue: str) -> Call[list[Row]]:
    return _call("list_contracts", [queue], {}, _rows)


def bind(pattern: str, queue: str) -> Call[bool]:
    return _call("bind", [pattern, queue], {}, _scalar)


def unbind(pattern: str, queue: str) -> Call[bool]:
    return _call("unbind", [pattern, queue], {}, _scalar)


def list_bindings() -> Call[list[Row]]:
    return _call("list_bindings", [], {}, _rows)


def grant(queue: str, role: str, privilege: str) -> Call[bool]:
    return _call("grant", [queue, role, privilege], {}, _scalar, {1: "regrole"})


def revoke(queue: str, role: str, privilege: str | None = None) -> Call[int]:
    return _call("revoke", [queue, role], dict(privilege=privilege), _scalar, {1: "regrole"})


def list_grants(queue: str | None = None) -> Call[list[Row]]:
    return _call("list_grants", [] if queue is None else [queue], {}, _rows)
