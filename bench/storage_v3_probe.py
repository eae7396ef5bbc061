"""Storage v3's groundwork (issue #31): what a partition per queue costs and saves, measured
before pgflow's layout is changed. Not pgflow's code: a table shaped like pgflow.message, in
two layouts, on the Postgres the DSN names.

  shared       one table for every queue (0.2.0's layout)
  partitioned  LIST-partitioned by queue_id, a partition per queue

For 1, 100 and 1,000 queues it times, inside the server by its own clock (no client round
trip in the figures), the claim probe of a read (the ready index's first 10 rows, FOR UPDATE
SKIP LOCKED) and a one-row send, in a transaction rolled back, each written three ways:

  static SQL        in PL/pgSQL, the queue a variable (pgflow's verbs today): the plan cache
                    chooses a custom plan per call or a generic one
  built per call    the statement built with the queue's id written in and EXECUTEd (pgmq's
                    way): parsed and planned on every call
  prepared per queue  a statement per queue with its id written in, prepared once and kept
                    (what a plan cache in the Rust layer would do), on the parent table, and
                    on the queue's own partition named directly (a table per queue, as pgmq)

and counts the relation locks a claim holds, also under a forced generic plan. Then the lock
each way of adding and removing a partition takes on the parent, and a queue of N messages
purged and dropped in each layout: the seconds, and the dead rows left behind.

Usage: storage_v3_probe.py DSN [--rows-per-queue R] [--calls C] [--big N]
Prints Markdown tables. Compare ratios, not absolute figures.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

DDL = """
DROP TABLE IF EXISTS v3_shared, v3_part CASCADE;
CREATE TABLE v3_shared (
    queue_id integer NOT NULL, msg_id bigint NOT NULL, read_ct integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(), vt timestamptz NOT NULL DEFAULT now(),
    priority smallint NOT NULL DEFAULT 0, state "char" NOT NULL DEFAULT 'r',
    message jsonb NOT NULL, PRIMARY KEY (queue_id, msg_id));
CREATE INDEX ON v3_shared (queue_id, (-(priority::integer)), msg_id) WHERE state = 'r';
CREATE TABLE v3_part (LIKE v3_shared INCLUDING DEFAULTS, PRIMARY KEY (queue_id, msg_id))
    PARTITION BY LIST (queue_id);
CREATE INDEX ON v3_part (queue_id, (-(priority::integer)), msg_id) WHERE state = 'r';
"""

PAYLOAD = '{"type": "proposal_for_consensus", "n": 1}'


def one(c: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the one row `sql` returns."""
    row = c.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def setup(c: psycopg.Connection, queues: int, rows: int) -> None:
    c.execute(DDL)
    for q in range(1, queues + 1):
        c.execute(f"CREATE TABLE v3_part_{q} PARTITION OF v3_part FOR VALUES IN ({q})")
    for t in ("v3_shared", "v3_part"):
        c.execute(
            f"""INSERT INTO {t} (queue_id, msg_id, message)
                SELECT q, g, %s::jsonb FROM generate_series(1, %s) q, generate_series(1, %s) g""",
            (PAYLOAD, queues, rows))
    c.execute("VACUUM ANALYZE v3_shared")
    c.execute("VACUUM ANALYZE v3_part")


SERVER_LOOP = """
CREATE OR REPLACE FUNCTION pg_temp.v3_loop(t regclass, queues int, calls int, how text)
RETURNS float8 LANGUAGE plpgsql AS $f$
-- Microseconds a call over `calls` calls on queues 1..queues in a scrambled order.
DECLARE t0 timestamptz; q int; n bigint := 10000000;
BEGIN
  IF how IN ('per queue', 'per queue, own table') THEN
    FOR q IN 1..queues LOOP
      EXECUTE format('PREPARE v3c_%s AS SELECT msg_id FROM %s WHERE queue_id = %s AND state = ''r''
                      ORDER BY -(priority::integer), msg_id LIMIT 10 FOR UPDATE SKIP LOCKED', q,
                     CASE WHEN how = 'per queue' THEN t::text ELSE format('v3_part_%s', q) END, q);
    END LOOP;
  END IF;
  t0 := clock_timestamp();
  FOR i IN 1..calls LOOP
    q := 1 + (i * 7919) % queues;
    IF how = 'static' AND t = 'v3_shared'::regclass THEN
      PERFORM msg_id FROM v3_shared WHERE queue_id = q AND state = 'r'
        ORDER BY -(priority::integer), msg_id LIMIT 10 FOR UPDATE SKIP LOCKED;
    ELSIF how = 'static' THEN
      PERFORM msg_id FROM v3_part WHERE queue_id = q AND state = 'r'
        ORDER BY -(priority::integer), msg_id LIMIT 10 FOR UPDATE SKIP LOCKED;
    ELSIF how = 'dynamic' THEN
      EXECUTE format('SELECT msg_id FROM %s WHERE queue_id = %s AND state = ''r''
                      ORDER BY -(priority::integer), msg_id LIMIT 10 FOR UPDATE SKIP LOCKED', t, q);
    ELSIF how IN ('per queue', 'per queue, own table') THEN
      EXECUTE format('EXECUTE v3c_%s', q);
    ELSIF how = 'send' AND t = 'v3_shared'::regclass THEN
      n := n + 1;
      INSERT INTO v3_shared (queue_id, msg_id, message) VALUES (q, n, '{"n": 1}');
    ELSIF how = 'send' THEN
      n := n + 1;
      INSERT INTO v3_part (queue_id, msg_id, message) VALUES (q, n, '{"n": 1}');
    END IF;
  END LOOP;
  IF how IN ('per queue', 'per queue, own table') THEN
    FOR q IN 1..queues LOOP EXECUTE format('DEALLOCATE v3c_%s', q); END LOOP;
  END IF;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls;
END $f$;
"""


def claim_variants(c: psycopg.Connection, queues: int, calls: int) -> dict[str, float]:
    """Each variant in a transaction of its own, rolled back (the sends too)."""
    out: dict[str, float] = {}
    c.execute(SERVER_LOOP)
    for t in ("v3_shared", "v3_part"):
        for how in ("static", "dynamic", "per queue", "send") + (
                ("per queue, own table",) if t == "v3_part" else ()):
            c.execute("BEGIN")
            out[f"{t} {how}"] = float(one(c, "SELECT pg_temp.v3_loop(%s, %s, %s, %s)",
                                          (t, queues, calls, how)))
            c.execute("ROLLBACK")
    return out


def claim_locks(c: psycopg.Connection) -> dict[str, int]:
    """Relation locks held after claims on queue 1 in one transaction: static SQL in PL/pgSQL
    (ten calls: past the plan cache's five custom plans), and the same under
    plan_cache_mode = force_generic_plan, whose run-time pruning comes only after every
    partition is locked (18.6 included)."""
    out = {}
    for t in ("v3_shared", "v3_part"):
        for label, mode in (("static", "auto"), ("generic", "force_generic_plan")):
            c.execute("BEGIN")
            c.execute(f"SET LOCAL plan_cache_mode = {mode}")
            c.execute("SELECT pg_temp.v3_loop(%s, 1, 10, 'static')", (t,))
            out[f"{t} {label}"] = int(one(c, """SELECT count(*) FROM pg_locks
                    WHERE pid = pg_backend_pid() AND locktype = 'relation'"""))
            c.execute("ROLLBACK")
    return out


def big_queue(c: psycopg.Connection, n: int) -> list[tuple[str, float, int]]:
    """A queue of n messages beside queue 1's rows, purged then dropped in each layout:
    (what, seconds, dead rows left in the layout's tables afterwards)."""
    big = 999_999
    out = []
    c.execute(f"CREATE TABLE v3_part_big PARTITION OF v3_part FOR VALUES IN ({big})")
    for t in ("v3_shared", "v3_part"):
        c.execute(f"""INSERT INTO {t} (queue_id, msg_id, message)
                      SELECT {big}, g, %s::jsonb FROM generate_series(1, %s) g""", (PAYLOAD, n))
    c.execute("VACUUM ANALYZE v3_shared, v3_part")

    def dead(t: str) -> int:
        c.execute("SELECT pg_stat_force_next_flush()")  # 15+: this session's counts, now
        return int(one(c, """SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables
                               WHERE relname LIKE %s""", (t + "%",)))

    t0 = time.perf_counter()
    c.execute(f"DELETE FROM v3_shared WHERE queue_id = {big}")
    out.append(("shared: purge (DELETE)", time.perf_counter() - t0, dead("v3_shared")))
    t0 = time.perf_counter()
    c.execute("TRUNCATE v3_part_big")
    out.append(("partitioned: purge (TRUNCATE the partition)", time.perf_counter() - t0, dead("v3_part")))
    c.execute(f"""INSERT INTO v3_part (queue_id, msg_id, message)
                  SELECT {big}, g, %s::jsonb FROM generate_series(1, %s) g""", (PAYLOAD, n))
    t0 = time.perf_counter()
    c.execute("DROP TABLE v3_part_big")
    out.append(("partitioned: drop (DROP the partition)", time.perf_counter() - t0, dead("v3_part")))
    return out


def ddl_locks(c: psycopg.Connection) -> list[tuple[str, str]]:
    """The lock each way of adding and removing a queue's partition takes on the parent table
    (what every other queue's senders and readers would wait behind), inside a transaction
    that is rolled back. DETACH ... CONCURRENTLY cannot run in a transaction block: its locks
    are documented (SHARE UPDATE EXCLUSIVE on the parent)."""
    c.execute("CREATE TABLE IF NOT EXISTS v3_loose (LIKE v3_part INCLUDING DEFAULTS)")
    c.execute("ALTER TABLE v3_loose ADD PRIMARY KEY (queue_id, msg_id)")
    c.execute("ALTER TABLE v3_loose ADD CONSTRAINT v3_loose_q CHECK (queue_id = 777)")
    out = []
    for what, sql in (
        ("CREATE TABLE ... PARTITION OF", "CREATE TABLE v3_new PARTITION OF v3_part FOR VALUES IN (778)"),
        ("ATTACH PARTITION", "ALTER TABLE v3_part ATTACH PARTITION v3_loose FOR VALUES IN (777)"),
        ("DETACH PARTITION", "ALTER TABLE v3_part DETACH PARTITION v3_part_1"),
        ("DROP TABLE (a partition)", "DROP TABLE v3_part_1"),
        ("TRUNCATE (a partition)", "TRUNCATE v3_part_1"),
    ):
        c.execute("BEGIN")
        c.execute(sql)
        mode = one(c, """SELECT string_agg(mode, ', ' ORDER BY mode) FROM pg_locks
                          WHERE pid = pg_backend_pid() AND relation = 'v3_part'::regclass
                            AND granted""")
        c.execute("ROLLBACK")
        out.append((what, str(mode or "none")))
    c.execute("DROP TABLE v3_loose")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--rows-per-queue", type=int, default=200)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--queues", default="1,100,1000")
    a = ap.parse_args()
    with psycopg.connect(a.dsn, autocommit=True, prepare_threshold=None) as c:
        v = one(c, "SHOW server_version")
        print(f"## Storage v3 probe: Postgres {v}, {a.rows_per_queue} ready rows a queue, "
              f"{a.calls} calls a cell\n")
        print("| queues | layout | claim, static SQL (µs) | claim, built per call (µs) "
              "| claim, prepared per queue (µs) | claim, prepared per queue on its partition (µs) "
              "| send, static SQL (µs) | locks after a claim | locks, generic plan |")
        print("|---|---|---|---|---|---|---|---|---|")
        for queues in [int(x) for x in a.queues.split(",")]:
            setup(c, queues, a.rows_per_queue)
            cl = claim_variants(c, queues, a.calls)
            lk = claim_locks(c)
            for t, name in (("v3_shared", "shared"), ("v3_part", "partitioned")):
                own = cl.get(f"{t} per queue, own table")
                print(f"| {queues} | {name} | {cl[f'{t} static']:.1f} | {cl[f'{t} dynamic']:.1f} "
                      f"| {cl[f'{t} per queue']:.1f} | {'–' if own is None else f'{own:.1f}'} "
                      f"| {cl[f'{t} send']:.1f} "
                      f"| {lk[f'{t} static']} | {lk[f'{t} generic']} |", flush=True)
        setup(c, 1, a.rows_per_queue)
        print("\n| adding or removing a partition | lock on the parent |\n|---|---|")
        for what, mode in ddl_locks(c):
            print(f"| {what} | {mode} |")
        print(f"\n| a queue of {a.big:,} messages | seconds | dead rows left |\n|---|---|---|")
        for what, s, d in big_queue(c, a.big):
            print(f"| {what} | {s:.3f} | {d:,} |")
        c.execute("DROP TABLE IF EXISTS v3_shared, v3_part CASCADE")


if __name__ == "__main__":
    main()
