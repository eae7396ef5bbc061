"""The links workload (issue #29; bench/links.sh starts two sites on one machine): site a forwards
queue `out` over link `central` to queue `inbox` at site c. Figures, each as a rate or a
percentile (never a timed assertion):
  * local:       1 client's send rate into a queue that is not forwarded (the baseline);
  * forwarded:   1 client sending into the forwarded queue as fast as it can, until the last
                 message is readable at c: forwarded msg/s, and its ratio to local;
  * batches:     send_batch of 100 and of 1,000 messages into the forwarded queue, until the last
                 is readable at c;
  * latency:     one send every 20 ms while caught up: c's enqueued_at minus a's send time
                 (both servers' clocks, one machine), p50 and p99;
  * drain:       c stopped, a backlog sent at a, c started: messages per second from c's start
                 until the last arrived;
  * client loop: what users build today, a loop that reads 100 at a, send_batch's them to c and
                 archives them at a, on the same backlog size: msg/s. Twice: with the Rust
                 client (clients/rust/examples/forward_loop.rs: archive_read, send_batch; the
                 binary in FORWARD_LOOP) and in Python with psycopg, one connection per site.
Usage: links.py BINDIR A_PORT A_DIR C_PORT C_DIR OUT_CSV [N_DRAIN]"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import psycopg

BINDIR, A_PORT, A_DIR, C_PORT, C_DIR, OUT = sys.argv[1:7]
N_DRAIN = int(sys.argv[7]) if len(sys.argv) > 7 else 100_000


def conn(port: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True)


a, c = conn(A_PORT), conn(C_PORT)


def one(cx: psycopg.Connection[Any], sql: str, *p: Any) -> Any:
    row = cx.execute(sql, p).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def inbox_count() -> int:
    with conn(C_PORT) as cx:
        return int(one(cx, "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id) "
                           "WHERE q.queue_name = 'inbox'"))


def wait_inbox(n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while inbox_count() < n:
        if time.monotonic() > deadline:
            sys.exit(f"links bench: {n} messages did not arrive at c within {timeout} s")
        time.sleep(0.005)
    return time.monotonic()


def purge() -> None:
    one(c, "SELECT pgflow.purge_queue('inbox')")


def pg_ctl(d: str, *args: str) -> None:
    subprocess.run(["sudo", "-u", "postgres", "--", f"{BINDIR}/pg_ctl", "-D", d, "-l", f"{d}/server.log",
                    "-w", "-t", "120", *args], check=True, stdout=subprocess.DEVNULL)


results: list[tuple[str, str, float]] = []


def record(name: str, unit: str, value: float) -> None:
    results.append((name, unit, value))
    print(f"{name}: {value:,.2f} {unit}" if unit == "x" else f"{name}: {value:,.1f} {unit}", flush=True)


N = 5000
t0 = time.monotonic()
for i in range(N):
    a.execute("SELECT pgflow.send('local', '{\"n\": 1}')")
local = N / (time.monotonic() - t0)
record("local send, 1 client", "msg/s", local)

purge()
t0 = time.monotonic()
for i in range(N):
    a.execute("SELECT pgflow.send('out', '{\"n\": 1}')")
sent = time.monotonic()
done = wait_inbox(N)
fwd = N / (done - t0)
record("forwarded send, 1 client (sent to readable at c)", "msg/s", fwd)
record("forwarded / local", "x", fwd / local)
record("forwarded: last readable after the last send", "ms", (done - sent) * 1000)

for size in (100, 1000):
    purge()
    total = 50_000
    t0 = time.monotonic()
    for _ in range(total // size):
        a.execute("SELECT pgflow.send_batch('out', array_fill('{\"b\": 1}'::jsonb, ARRAY[%s]))", (size,))
    done = wait_inbox(total)
    record(f"forwarded send_batch of {size}", "msg/s", total / (done - t0))

purge()
for i in range(200):
    a.execute("SELECT pgflow.send('out', jsonb_build_object('at', clock_timestamp()))")
    time.sleep(0.02)
wait_inbox(200)
lat = sorted(float(r[0]) for r in c.execute(
    "SELECT extract(epoch FROM m.enqueued_at - (m.message ->> 'at')::timestamptz) * 1000 "
    "FROM pgflow.message m JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = 'inbox'").fetchall())
record("end to end p50 (send at a to readable at c), caught up", "ms", lat[len(lat) // 2])
record("end to end p99, caught up", "ms", lat[int(len(lat) * 0.99) - 1])

purge()
c.close()
pg_ctl(C_DIR, "-m", "fast", "stop")
for _ in range(N_DRAIN // 1000):
    a.execute("SELECT pgflow.send_batch('out', array_fill('{\"d\": 1}'::jsonb, ARRAY[1000]))")
t0 = time.monotonic()
pg_ctl(C_DIR, "start")
done = wait_inbox(N_DRAIN)
record(f"drain of a {N_DRAIN:,} backlog after an outage (from the remote's start)", "msg/s",
       N_DRAIN / (done - t0))
c = conn(C_PORT)

# What users build today: a client loop moving messages from a's queue to c's. First with the
# Rust client.
purge()
one(a, "SELECT pgflow.create_queue('outbox_loop')")
for _ in range(N_DRAIN // 1000):
    a.execute("SELECT pgflow.send_batch('outbox_loop', array_fill('{\"l\": 1}'::jsonb, ARRAY[1000]))")
loop = subprocess.run(
    [os.environ["FORWARD_LOOP"], "outbox_loop", "inbox", str(N_DRAIN)], check=True, capture_output=True, text=True,
    env={**os.environ, "FROM_DSN": f"host=127.0.0.1 port={A_PORT} user=postgres dbname=postgres",
         "TO_DSN": f"host=127.0.0.1 port={C_PORT} user=postgres dbname=postgres"})
rate = float(loop.stdout.strip().rsplit(": ", 1)[1].split()[0])
if inbox_count() != N_DRAIN:
    sys.exit(f"links bench: the Rust loop moved {inbox_count()} messages, not {N_DRAIN}")
record(f"client loop in Rust (archive_read 100, remote send_batch) on a {N_DRAIN:,} backlog", "msg/s", rate)

# The same loop in Python.
purge()
for _ in range(N_DRAIN // 1000):
    a.execute("SELECT pgflow.send_batch('outbox_loop', array_fill('{\"l\": 1}'::jsonb, ARRAY[1000]))")
t0 = time.monotonic()
moved = 0
while moved < N_DRAIN:
    rows = a.execute("SELECT msg_id, message FROM pgflow.read('outbox_loop', '30 s', 100)").fetchall()
    if not rows:
        continue
    c.execute("SELECT pgflow.send_batch('inbox', %s::jsonb[])", ([psycopg.types.json.Jsonb(r[1]) for r in rows],))
    a.execute("SELECT pgflow.archive('outbox_loop', %s::bigint[])", ([r[0] for r in rows],))
    moved += len(rows)
record(f"client loop in Python (read 100, remote send_batch, archive) on a {N_DRAIN:,} backlog", "msg/s",
       N_DRAIN / (time.monotonic() - t0))

with open(OUT, "w") as f:
    f.write("measure,unit,value\n")
    for name, unit, value in results:
        f.write(f"\"{name}\",{unit},{value:.3f}\n")
