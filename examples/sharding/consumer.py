"""Consume a queue that is sharded by key (pgflow_router.create_queue_everywhere and send_keyed,
examples/sharding/router.sql): one pgflow_mq Consumer per shard, all in one asyncio process.

The router lists the shards (pgflow_router.shards()); each consumer connects to its shard
directly and runs the ordinary runtime there (long-poll reads, heartbeats, archive_read,
nacks with receipts), so a message is archived or nacked on the shard it came from. Per-key
order holds because a key's messages all live on one shard, where the key is their group_key.

    python consumer.py "host=router dbname=app" orders --workers 2

As a library: ``await consume_all_shards(router_dsn, queue, handler, workers=2)``; the handler
gets ``(shard, message, connection)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any, Awaitable, Callable

import psycopg

import pgflow_mq as pgflow

ShardHandler = Callable[[int, pgflow.Message, psycopg.AsyncConnection[Any]], Awaitable[pgflow.Retry | None]]


async def shards(router_dsn: str) -> list[tuple[int, str]]:
    """The shards' numbers and connection strings, as the router's cluster lists them."""
    async with await psycopg.AsyncConnection.connect(router_dsn, autocommit=True) as r:
        cur = await r.execute("SELECT shard, connstr FROM pgflow_router.shards()")
        return [(int(n), str(c)) for n, c in await cur.fetchall()]


def consumers(shard_list: list[tuple[int, str]], queue: str, handler: ShardHandler,
              **options: Any) -> list[pgflow.Consumer]:
    """One Consumer per shard; options are Consumer's (workers, batch, vt, wait, ...)."""

    def bound(shard: int) -> pgflow.Handler:
        async def handle(m: pgflow.Message, conn: psycopg.AsyncConnection[Any]) -> pgflow.Retry | None:
            return await handler(shard, m, conn)
        return handle

    return [pgflow.Consumer(dsn, queue, bound(n), **options) for n, dsn in shard_list]


async def consume_all_shards(router_dsn: str, queue: str, handler: ShardHandler,
                             **options: Any) -> list[pgflow.Consumer]:
    """Runs a consumer on every shard until SIGTERM or SIGINT, which stop them all (each then
    drains what it has in hand)."""
    all_ = consumers(await shards(router_dsn), queue, handler, **options)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for c in all_:
            c.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await asyncio.gather(*(c.run(handle_signals=False) for c in all_))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return all_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("router_dsn")
    ap.add_argument("queue")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    async def show(shard: int, m: pgflow.Message, conn: psycopg.AsyncConnection[Any]) -> None:
        print(json.dumps({"shard": shard, "msg_id": m.msg_id, "message": m.message}), flush=True)

    asyncio.run(consume_all_shards(args.router_dsn, args.queue, show, workers=args.workers))


if __name__ == "__main__":
    main()
