"""A consumer runtime on asyncio: N workers in one process, each on its own connection.

Each worker long-polls ``read`` for up to ``batch`` messages and hands them to the handler one
at a time, inside a transaction on the worker's connection that the handler may use: the
handler's own writes and the ``archive`` commit together, or not at all. After the last message
of a batch, the archive and the lease of the next batch are one ``archive_read`` in that
transaction (one round trip, one commit); the worker long-polls again only when it came back
empty, so it never waits in a long-poll with an archive uncommitted.

- The handler returns normally: the message is archived, in that transaction.
- It returns :class:`Retry`: the transaction rolls back and the message is nacked with
  ``retry_after``.
- It raises, or runs past ``handler_timeout`` (then it is cancelled): the transaction rolls
  back and the message is nacked with the error, so the queue's retry policy applies and a
  message that keeps failing ends in the dead-letter queue.

Nothing fails without a word: each failed delivery is logged (a WARNING on logger
``pgflow_mq.consumer`` with the queue, the id, its ``read_ct`` and the reason, and whether it
comes back and when, or went to the dead-letter queue, an ERROR then), and handed to
``on_event`` when one is given (a :class:`ConsumerEvent`: ``failed`` for every failure, then
``retried`` or ``dead_lettered``). A handler that cannot be called as ``handler(message,
connection)`` and awaited is refused when the consumer is made (``TypeError``): before, a
one-argument handler failed every delivery until the message was dead-lettered.

While a handler runs, a heartbeat extends the lease every ``heartbeat`` (a third of ``vt`` by
default) over one connection the workers share, so a slow handler keeps its message. A nack
names the lease ``receipt`` it received, and so do the archive and the heartbeat: if the lease
was lost meanwhile (the message went to another consumer, or, after a failover, the id belongs
to another message), the nack is refused (:class:`pgflow_mq.errors.LeaseLost`) and logged, the
archive skips the message, the heartbeat stops, and the new holder's lease is left alone.

:meth:`Consumer.stop` (and SIGTERM or SIGINT, when :meth:`Consumer.run` installed its
handlers) stops taking messages: workers waiting in a long-poll are cancelled (nothing is
leased by a cancelled read), workers with messages finish them (the batch's later messages are
released with ``set_vt`` 0, not processed), and ``run`` returns when all are done.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable

import psycopg

from .client import AsyncClient
from .errors import FeatureNotSupported, LeaseLost, OutcomeUnknown, PgflowError
from ._calls import Message

log = logging.getLogger("pgflow_mq.consumer")


@dataclass(frozen=True)
class Retry:
    """A handler's result: deliver the message again after ``after``."""

    after: timedelta


Handler = Callable[[Message, psycopg.AsyncConnection[Any]], Awaitable[Retry | None]]


@dataclass(frozen=True)
class ConsumerEvent:
    """What happened to a delivery that did not succeed, as ``on_event`` receives it.

    ``kind`` is ``"failed"`` (the handler raised, asked for a retry or timed out: ``reason``
    says which), then ``"retried"`` (the message comes back at ``retry_at``) or
    ``"dead_lettered"`` (it went to the queue's dead-letter queue).
    """

    kind: str
    queue: str
    msg_id: int
    read_ct: int
    reason: str
    retry_at: Any = None


def _check_handler(handler: Any) -> None:
    """Refuses a handler that cannot be called as ``await handler(message, connection)``."""
    if not callable(handler):
        raise TypeError(f"handler must be an async function, got {type(handler).__name__}")
    if not (inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None))):
        raise TypeError(f"handler {handler!r} must be an async function (async def), called as "
                        "await handler(message, connection)")
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError as e:
        raise TypeError(f"handler {handler!r} must take two arguments, (message, connection): "
                        f"{e}") from None


class _Retry(Exception):
    def __init__(self, after: timedelta) -> None:
        self.after = after


class Consumer:
    """Consumes ``queue`` with ``handler`` on ``workers`` connections to ``conninfo``."""

    def __init__(
        self,
        conninfo: str,
        queue: str,
        handler: Handler,
        *,
        workers: int = 1,
        batch: int = 1,
        vt: timedelta = timedelta(seconds=30),
        wait: timedelta = timedelta(seconds=5),
        handler_timeout: timedelta | None = None,
        heartbeat: timedelta | None = None,
        pooled: bool = False,
        on_event: Callable[[ConsumerEvent], None] | None = None,
    ) -> None:
        _check_handler(handler)
        if workers < 1 or batch < 1:
            raise ValueError("workers and batch must be at least 1")
        if vt <= timedelta(0) or wait < timedelta(0):
            raise ValueError("vt must be positive and wait not negative")
        self.conninfo = conninfo
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.batch = batch
        self.vt = vt
        self.wait = wait
        self.handler_timeout = handler_timeout
        self.heartbeat = heartbeat if heartbeat is not None else vt / 3
        # Through a transaction-mode pooler (PgBouncer): no prepared statements, and a queue
        # with session_leases is refused at start (its leases belong to a server connection).
        self.pooled = pooled
        self.on_event = on_event
        self.processed = 0  # messages archived
        self.failed = 0  # messages nacked
        self._stopping = asyncio.Event()
        self._polling: set[psycopg.AsyncConnection[Any]] = set()
        self._hb_lock = asyncio.Lock()
        self._hb: AsyncClient | None = None

    def stop(self) -> None:
        """Stops taking messages; in-flight ones are finished. Safe to call more than once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.pooled:
            # Through a pooler the long-polls are left to end by themselves (within `wait`):
            # PgBouncer 1.18 forwards cancel requests, and in this project's tests several at
            # once crashed it ("bad client state" in disconnect_client).
            return
        for conn in list(self._polling):
            asyncio.ensure_future(self._cancel(conn))

    async def _cancel(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Only a connection still in its long-poll: a cancel that reached a handler's
        # statement instead would fail that message for no reason.
        if conn not in self._polling:
            return
        try:
            await conn.cancel_safe()
        except psycopg.Error:
            pass

    async def run(self, *, handle_signals: bool = True) -> None:
        """Runs until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``), then drains."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with await self._connect() as hb:
                self._hb = AsyncClient(hb)
                if self.pooled:
                    await self._check_pooling(self._hb)
                await asyncio.gather(*(self._worker(i) for i in range(self.workers)))
        finally:
            self._hb = None
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        # prepare_threshold None: psycopg never prepares a named statement, which a pooler
        # in transaction mode could not carry to the next server connection.
        if self.pooled:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                         prepare_threshold=None)
        return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)

    async def _check_pooling(self, client: AsyncClient) -> None:
        for q in await client.list_queues():
            if q["queue_name"] == self.queue and q["session_leases"]:
                raise FeatureNotSupported(
                    f'queue "{self.queue}" has session_leases, which need a stable backend: a '
                    "transaction-mode pooler lends each transaction a server connection of its "
                    "own (consume it through session pooling or a direct connection)")

    async def _worker(self, n: int) -> None:
        async with await self._connect() as conn:
            client = AsyncClient(conn)
            messages: list[Message] = []
            while not self._stopping.is_set():
                if not messages:
                    self._polling.add(conn)
                    try:
                        messages = await client.read(self.queue, vt=self.vt, qty=self.batch,
                                                     wait=self.wait)
                    except OutcomeUnknown as e:
                        # The read's commit was not confirmed by the synchronous standby (a
                        # stop() may have cancelled its wait): its leases come back when they
                        # run out; none is handled here.
                        log.warning("%s: a read's outcome is unknown: %s", self.queue, e)
                        messages = []
                    except PgflowError as e:
                        if self._stopping.is_set() and e.sqlstate == "57014":
                            break  # the long-poll cancelled by stop(): nothing was leased
                        raise
                    finally:
                        self._polling.discard(conn)
                    continue
                m = messages.pop(0)
                # The batch's last message fetches the next batch with its archive.
                messages.extend(await self._handle(client, conn, m, fetch=not messages))
            # Leased but not started (stop() came): give them back at once rather than at the
            # lease's end.
            for rest in messages:
                try:
                    await client.set_vt(self.queue, rest.msg_id, timedelta(0), receipt=rest.receipt)
                except LeaseLost:
                    pass  # someone else has it already

    async def _handle(self, client: AsyncClient, conn: psycopg.AsyncConnection[Any], m: Message,
                      *, fetch: bool) -> list[Message]:
        """Runs the handler on ``m``; returns the next batch when ``fetch`` (and not stopping)."""
        beat = asyncio.create_task(self._beat(m))
        error: str | None = None
        retry_after: timedelta | None = None
        nxt: list[Message] = []
        try:
            async with conn.transaction():
                timeout = None if self.handler_timeout is None else self.handler_timeout.total_seconds()
                result = await asyncio.wait_for(self.handler(m, conn), timeout)
                if isinstance(result, Retry):
                    raise _Retry(result.after)
                if fetch and not self._stopping.is_set():
                    leased = await client.archive_read(self.queue, [m.msg_id], vt=self.vt,
                                                       qty=self.batch, receipts=[m.receipt])
                else:
                    await client.archive(self.queue, [m.msg_id], receipts=[m.receipt])
                    leased = []
            # Committed: the archive, and the next batch's leases with it; unless the commit's
            # wait for the synchronous standby was cancelled (its warning comes with the COMMIT,
            # which is not a client call): then neither is sure, and what a failover lost comes
            # back when its lease runs out.
            unknown, client._watch.unknown = client._watch.unknown, None
            if unknown is not None:
                log.warning("message %s of %s: the commit's outcome is unknown: %s", m.msg_id,
                            self.queue, unknown)
                leased = []
            nxt = leased
            self.processed += 1
        except OutcomeUnknown as e:
            # The archive_read's own commit (outside a transaction) was not confirmed.
            log.warning("message %s of %s: the archive's outcome is unknown: %s", m.msg_id,
                        self.queue, e)
        except _Retry as r:
            retry_after, error = r.after, "retry requested by the handler"
        except asyncio.TimeoutError:
            error = f"handler timed out after {self.handler_timeout}"
        except Exception as e:  # noqa: BLE001 - any handler failure is a failed delivery
            error = f"{type(e).__name__}: {e}"
        finally:
            beat.cancel()
            try:
                await beat
            except asyncio.CancelledError:
                pass
        if error is not None:
            self.failed += 1
            self._event(ConsumerEvent("failed", self.queue, m.msg_id, m.read_ct, error))
            try:
                res = await client.nack(self.queue, m.msg_id, error=error, retry_after=retry_after,
                                        receipt=m.receipt)
            except LeaseLost:
                log.warning("message %s of %s (read_ct %s) failed: %s; its lease was lost before "
                            "the nack", m.msg_id, self.queue, m.read_ct, error)
                return nxt
            if res is not None and res.outcome == "dead":
                log.error("message %s of %s (read_ct %s) failed: %s; dead-lettered",
                          m.msg_id, self.queue, m.read_ct, error)
                self._event(ConsumerEvent("dead_lettered", self.queue, m.msg_id, m.read_ct, error))
            elif res is not None:
                log.warning("message %s of %s (read_ct %s) failed: %s; retried at %s",
                            m.msg_id, self.queue, m.read_ct, error, res.retry_at)
                self._event(ConsumerEvent("retried", self.queue, m.msg_id, m.read_ct, error,
                                          res.retry_at))
        return nxt

    def _event(self, e: ConsumerEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(e)
        except Exception:  # noqa: BLE001 - an observer must not break the consumer
            log.exception("on_event raised on %s", e)

    async def _beat(self, m: Message) -> None:
        """Extends the lease every ``heartbeat`` while the handler runs."""
        while True:
            await asyncio.sleep(self.heartbeat.total_seconds())
            if self._hb is None:
                return
            async with self._hb_lock:
                try:
                    await self._hb.set_vt(self.queue, m.msg_id, self.vt, receipt=m.receipt)
                except LeaseLost:
                    log.warning("message %s of %s: lease lost, heartbeat stopped", m.msg_id, self.queue)
                    return
                except PgflowError as e:
                    log.warning("message %s of %s: heartbeat failed: %s", m.msg_id, self.queue, e)
