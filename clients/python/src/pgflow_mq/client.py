"""The sync and asyncio clients: every verb of pgflow's SQL API as a typed method.

Both wrap a psycopg 3 connection the caller owns, so a call runs in the caller's transaction
(a ``send`` commits with the caller's own writes) or in autocommit, as the connection is set
up. Each method's parameters are those of its builder in :mod:`pgflow._calls`; errors come
back as :mod:`pgflow_mq.errors` classes that keep the SQLSTATE.

A call in autocommit whose commit the server could not confirm with its synchronous standby
(the server's WARNING "canceling wait for synchronous replication") raises
:class:`pgflow_mq.errors.OutcomeUnknown` instead of returning: it may be lost in a failover.
In a transaction of the caller's, that warning comes with the caller's COMMIT; check it there
with :func:`pgflow_mq.errors.sync_rep_cancelled` in a notice handler.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Concatenate, Coroutine, ParamSpec, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row

from . import _calls
from ._calls import Call
from .errors import OutcomeUnknown, sync_rep_cancelled, translate

P = ParamSpec("P")
T = TypeVar("T")


class _Watch:
    """What a connection's notices said since its last call began: one per connection, however
    many clients wrap it (so a call is attributed to its connection, not to its client)."""

    def __init__(self) -> None:
        self.unknown: OutcomeUnknown | None = None

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        self.unknown = sync_rep_cancelled(diag) or self.unknown


_WATCHES: weakref.WeakKeyDictionary[Any, _Watch] = weakref.WeakKeyDictionary()


def _watch(conn: Any) -> _Watch:
    w = _WATCHES.get(conn)
    if w is None:
        w = _WATCHES[conn] = _Watch()
        conn.add_notice_handler(w)
    return w


class _Runs(Protocol):
    def run(self, call: Call[T]) -> T: ...


class _RunsAsync(Protocol):
    async def run(self, call: Call[T]) -> T: ...


def _sync(build: Callable[P, Call[T]]) -> Callable[Concatenate[_Runs, P], T]:
    def method(self: _Runs, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(build(*args, **kwargs))

    method.__name__ = build.__name__
    method.__doc__ = build.__doc__
    return method


def _async(build: Callable[P, Call[T]]) -> Callable[Concatenate[_RunsAsync, P], Coroutine[Any, Any, T]]:
    async def method(self: _RunsAsync, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run(build(*args, **kwargs))

    method.__name__ = build.__name__
    method.__doc__ = build.__doc__
    return method


class Client:
    """pgflow over a ``psycopg.Connection``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._watch = _watch(conn)

    def run(self, call: Call[T]) -> T:
        """Executes one built call (see :mod:`pgflow._calls`)."""
        self._watch.unknown = None
        try:
            with self.conn.cursor(row_factory=dict_row) as cur:
                cur.execute(call.sql, call.params)
                rows = cur.fetchall() if cur.description is not None else []
        except psycopg.Error as e:
            raise translate(e) from e
        unknown, self._watch.unknown = self._watch.unknown, None
        if unknown is not None:
            raise unknown
        return call.convert(rows)

    # The verbs, in docs/api.md's order, named as the SQL functions (spelled out, not a
    # loop, so that type checkers see each signature).
    create_queue = _sync(_calls.create_queue)
    alter_queue = _sync(_calls.alter_queue)
    list_queues = _sync(_calls.list_queues)
    drop_queue = _sync(_calls.drop_queue)
    purge_queue = _sync(_calls.purge_queue)
    send = _sync(_calls.send)
    send_batch = _sync(_calls.send_batch)
    publish = _sync(_calls.publish)
    read = _sync(_calls.read)
    archive_read = _sync(_calls.archive_read)
    pop = _sync(_calls.pop)
    archive = _sync(_calls.archive)
    delete = _sync(_calls.delete)
    set_vt = _sync(_calls.set_vt)
    nack = _sync(_calls.nack)
    dlq_list = _sync(_calls.dlq_list)
    dlq_list_all = _sync(_calls.dlq_list_all)
    dlq_retry = _sync(_calls.dlq_retry)
    dlq_delete = _sync(_calls.dlq_delete)
    dlq_purge = _sync(_calls.dlq_purge)
    retry_schedule = _sync(_calls.retry_schedule)
    metrics = _sync(_calls.metrics)
    metrics_all = _sync(_calls.metrics_all)
    list_pending = _sync(_calls.list_pending)
    alerts = _sync(_calls.alerts)
    stats_reset = _sync(_calls.stats_reset)
    metrics_text = _sync(_calls.metrics_text)
    horizon = _sync(_calls.horizon)
    maintain = _sync(_calls.maintain)
    set_contract = _sync(_calls.set_contract)
    drop_contract = _sync(_calls.drop_contract)
    list_contracts = _sync(_calls.list_contracts)
    bind = _sync(_calls.bind)
    unbind = _sync(_calls.unbind)
    list_bindings = _sync(_calls.list_bindings)
    grant = _sync(_calls.grant)
    revoke = _sync(_calls.revoke)
    list_grants = _sync(_calls.list_grants)


class AsyncClient:
    """pgflow over a ``psycopg.AsyncConnection``."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._watch = _watch(conn)

    async def run(self, call: Call[T]) -> T:
        """Executes one built call (see :mod:`pgflow._calls`)."""
        self._watch.unknown = None
        try:
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(call.sql, call.params)
                rows = await cur.fetchall() if cur.description is not None else []
        except psycopg.Error as e:
            raise translate(e) from e
        unknown, self._watch.unknown = self._watch.unknown, None
        if unknown is not None:
            raise unknown
        return call.convert(rows)

    # The verbs, in docs/api.md's order, named as the SQL functions (spelled out, not a
    # loop, so that type checkers see each signature).
    create_queue = _async(_calls.create_queue)
    alter_queue = _async(_calls.alter_queue)
    list_queues = _async(_calls.list_queues)
    drop_queue = _async(_calls.drop_queue)
    purge_queue = _async(_calls.purge_queue)
    send = _async(_calls.send)
    send_batch = _async(_calls.send_batch)
    publish = _async(_calls.publish)
    read = _async(_calls.read)
    archive_read = _async(_calls.archive_read)
    pop = _async(_calls.pop)
    archive = _async(_calls.archive)
    delete = _async(_calls.delete)
    set_vt = _async(_calls.set_vt)
    nack = _async(_calls.nack)
    dlq_list = _async(_calls.dlq_list)
    dlq_list_all = _async(_calls.dlq_list_all)
    dlq_retry = _async(_calls.dlq_retry)
    dlq_delete = _async(_calls.dlq_delete)
    dlq_purge = _async(_calls.dlq_purge)
    retry_schedule = _async(_calls.retry_schedule)
    metrics = _async(_calls.metrics)
    metrics_all = _async(_calls.metrics_all)
    list_pending = _async(_calls.list_pending)
    alerts = _async(_calls.alerts)
    stats_reset = _async(_calls.stats_reset)
    metrics_text = _async(_calls.metrics_text)
    horizon = _async(_calls.horizon)
    maintain = _async(_calls.maintain)
    set_contract = _async(_calls.set_contract)
    drop_contract = _async(_calls.drop_contract)
    list_contracts = _async(_calls.list_contracts)
    bind = _async(_calls.bind)
    unbind = _async(_calls.unbind)
    list_bindings = _async(_calls.list_bindings)
    grant = _async(_calls.grant)
    revoke = _async(_calls.revoke)
    list_grants = _async(_calls.list_grants)
