"""The PL/Proxy recipe (examples/sharding) on a router and its shards (tests/cluster/sharding.sh
starts them and passes the DSNs): placement by queue name, the routed verbs with receipts, a
queue sharded by key consumed on every shard with per-key order, and what is lost across shards.
Every wait is bounded and polls the servers' own state."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sharding"))
import consumer as sharded  # noqa: E402

import pgflow_mq as pgflow  # noqa: E402

ROUTER, SHARDS = sys.argv[1], sys.argv[2:]


def q1(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def check(what: str, ok: bool) -> None:
    print(("ok: " if ok else "FAILED: ") + what, flush=True)
    if not ok:
        sys.exit(1)


router = psycopg.connect(ROUTER, autocommit=True)
shards = [psycopg.connect(s, autocommit=True) for s in SHARDS]
listed = [c for _, c in router.execute("SELECT * FROM pgflow_router.shards()").fetchall()]
check("the router lists the shards in order", listed == SHARDS)

# --- Placement by queue name ---------------------------------------------------------------
queues = [f"jobs_{i}" for i in range(8)]
for q in queues:
    router.execute("SELECT pgflow_router.create_queue(%s)", (q,))
    router.execute("SELECT pgflow_router.send(%s, jsonb_build_object('n', n)) "
                   "FROM generate_series(1, 25) n", (q,))
home = {q: q1(router, "SELECT pgflow_router.shard_of(%s)", q) for q in queues}
counts = {(q, i): q1(s, "SELECT coalesce((SELECT m.queue_length FROM pgflow.list_queues() l, "
                        "LATERAL pgflow.metrics(l.queue_name, exact => true) m "
                        "WHERE l.queue_name = %s), -1)", q)
          for q in queues for i, s in enumerate(shards)}
check("each queue lives whole on the shard its name hashes to",
      all(counts[(q, i)] == (25 if i == home[q] else -1) for q in queues for i in range(len(shards))))
check("both shards hold queues", set(home.values()) == set(range(len(shards))))

# --- The routed verbs, with receipts --------------------------------------------------------
q = queues[0]
m = router.execute("SELECT msg_id, read_ct, receipt FROM pgflow_router.read(%s, '30 s', 1)", (q,)).fetchone()
assert m is not None
mid, _, first = m
out = router.execute("SELECT outcome FROM pgflow_router.nack(%s, %s, 'boom', '0', NULL, NULL, %s)",
                     (q, mid, first)).fetchone()
check("nack through the router retries the message", out == ("retry",))
again = None
for _ in range(2000):
    again = router.execute("SELECT msg_id, read_ct, receipt FROM pgflow_router.read(%s, '30 s', 1)", (q,)).fetchone()
    if again is not None:
        break
    time.sleep(0.01)
check("the retried message is read again (read_ct 2)", again is not None and again[:2] == (mid, 2))
assert again is not None
check("a stale receipt archives nothing through the router",
      q1(router, "SELECT pgflow_router.archive(%s, %s, %s)", q, mid, first) is False)
check("the current receipt archives it",
      q1(router, "SELECT pgflow_router.archive(%s, %s, %s)", q, mid, again[2]) is True)

# --- Not transactional across the router ----------------------------------------------------
before = q1(shards[home[q]], "SELECT queue_length FROM pgflow.metrics(%s, exact => true)", q)
with router.transaction(force_rollback=True):
    router.execute("SELECT pgflow_router.send(%s, '{\"rolled\": \"back at the router\"}')", (q,))
after = q1(shards[home[q]], "SELECT queue_length FROM pgflow.metrics(%s, exact => true)", q)
check("a send through the router commits on its shard even when the router's transaction "
      "rolls back (documented)", after == before + 1)

# --- A queue sharded by key, consumed on every shard ----------------------------------------
router.execute("SELECT * FROM pgflow_router.create_queue_everywhere('orders')")
KEYS, PER_KEY = 20, 10
for seq in range(PER_KEY):
    for k in range(KEYS):
        router.execute("SELECT pgflow_router.send_keyed('orders', %s, jsonb_build_object('seq', %s::int))",
                       (f"customer-{k}", seq))
held = [q1(s, "SELECT queue_length FROM pgflow.metrics('orders', exact => true)") for s in shards]
check(f"the keys spread over the shards ({held})", all(h > 0 for h in held) and sum(held) == KEYS * PER_KEY)

seen: dict[str, list[int]] = defaultdict(list)
by_shard: dict[int, int] = defaultdict(int)


async def handle(shard: int, m: pgflow.Message, conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT group_key FROM pgflow.message WHERE msg_id = %s AND queue_id = "
                             "(SELECT queue_id FROM pgflow.queue WHERE queue_name = 'orders')", (m.msg_id,))
    row = await cur.fetchone()
    assert row is not None
    seen[row[0]].append(m.message["seq"])
    by_shard[shard] += 1
    await asyncio.sleep(0.005)  # give the other keys' messages a chance to interleave


async def consume() -> list[pgflow.Consumer]:
    cs = sharded.consumers(await sharded.shards(ROUTER), "orders", handle, workers=3,
                           wait=timedelta(milliseconds=200))
    tasks = [asyncio.create_task(c.run(handle_signals=False)) for c in cs]
    end = time.monotonic() + 120
    while sum(c.processed for c in cs) < KEYS * PER_KEY:
        assert time.monotonic() < end, "the sharded consumers never drained the queue"
        for t in tasks:
            assert not t.done(), t.exception()
        await asyncio.sleep(0.05)
    for c in cs:
        c.stop()
    await asyncio.gather(*tasks)
    return cs


asyncio.run(consume())
check("every message was handled once, on its own shard",
      sum(len(v) for v in seen.values()) == KEYS * PER_KEY and dict(by_shard) == dict(enumerate(held)))
check("each key's messages were handled in send order",
      all(v == list(range(PER_KEY)) for v in seen.values()) and len(seen) == KEYS)
archived = sum(q1(s, "SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue USING (queue_id) "
                     "WHERE queue_name = 'orders'") for s in shards)
check("all of them archived, on their shards", archived == KEYS * PER_KEY)
print("sharding: all passed")
