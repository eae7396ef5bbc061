"""What the links tests share (links.py, links_cut.py, links_failover.py, ha_links.py): the
sites' connection strings, queries, bounded waits that poll the servers' own state, and the
exactly-once check of what a link delivered. A test fills DSN (site name -> connection string)
before it queries."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

import psycopg

DSN: dict[str, str] = {}


def log(msg: str) -> None:
    print(msg, flush=True)


def check(what: str, ok: bool, detail: Any = "") -> None:
    log(("ok: " if ok else "FAILED: ") + what + (f" ({detail})" if not ok and detail != "" else ""))
    if not ok:
        sys.exit(1)


def dsn(site: str, user: str | None = None, db: str | None = None) -> str:
    """The site's connection string, as another user or database if asked (libpq takes a
    keyword's last value)."""
    return DSN[site] + (f" user={user}" if user else "") + (f" dbname={db}" if db else "")


def conn(site: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(site, **kw), autocommit=True)


def q(site: str, sql: str, *params: Any, **kw: Any) -> list[tuple[Any, ...]]:
    with conn(site, **kw) as c:
        cur = c.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def q1(site: str, sql: str, *params: Any, **kw: Any) -> Any:
    rows = q(site, sql, *params, **kw)
    return rows[0][0] if rows else None


def sqlstate(site: str, sql: str, *params: Any, **kw: Any) -> str | None:
    try:
        q(site, sql, *params, **kw)
    except psycopg.Error as e:
        return e.sqlstate
    return None


def until(what: str, cond: Any, seconds: float = 120, detail: Any = None) -> None:
    """Polls cond every 0.1 s until it holds (a site that refuses connections meanwhile, as
    one restarting does, counts as not yet); fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if cond():
                return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            check(what + f" within {seconds:.0f} s", False, detail() if detail else "")
        time.sleep(0.1)


def filled(statement: str, host: str, port: int | str, user: str = "user=postgres", options: str = "") -> str:
    """link_create's statement with the connection string filled in (host and port; user: the
    conninfo words that replace `user=...`) and `options` added to its WITH list."""
    out = statement.replace("host=... port=...", f"host={host} port={port}").replace("user=...", user)
    return out.replace("copy_data = false", f"copy_data = false, {options}") if options else out


class Producer:
    """Sends {"n": i} to queue on a thread, one message every `pause` s, through the connection
    string dsn_of() gives at each (re)connection; an id counts as acknowledged once its commit
    returned (one in flight when its server died may or may not have been kept). A failed
    connection is retried after 0.2 s."""

    def __init__(self, dsn_of: Callable[[], str], queue: str, pause: float) -> None:
        self.acked: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dsn_of, queue, pause), daemon=True)
        self._thread.start()

    def _run(self, dsn_of: Callable[[], str], queue: str, pause: float) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn_of(), autocommit=True) as c:
                    while not self._stop.is_set():
                        cur = c.execute("SELECT pgflow.send(%s, jsonb_build_object('n', %s::int))", (queue, n))
                        row = cur.fetchone()
                        assert row is not None
                        self.acked.append(row[0])
                        n += 1
                        time.sleep(pause)
            except psycopg.Error:
                time.sleep(0.2)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.acked


def link_state(site: str, link: str) -> dict[str, Any]:
    """The link's row of pgflow.links() at site, by column name."""
    with conn(site) as c:
        cur = c.execute("SELECT * FROM pgflow.links() WHERE link_name = %s", (link,))
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return {d.name: v for d, v in zip(cur.description, row)}


def arrived(site: str, queue: str, origin_site: str) -> list[tuple[int, int, Any]]:
    """(msg id here, origin id, message) of every live message of queue sent from origin_site,
    in the order this site took them."""
    return [(r[0], int(r[1]), r[2]) for r in q(
        site,
        "SELECT m.msg_id, m.headers -> 'pgflow_origin' ->> 'id', m.message FROM pgflow.message m "
        "JOIN pgflow.queue u USING (queue_id) WHERE u.queue_name = %s "
        "AND m.headers -> 'pgflow_origin' ->> 'site' = %s ORDER BY m.msg_id", queue, origin_site)]


def resent(site: str, queue: str) -> int:
    """How many messages of queue at site came again after their link's slot was lost."""
    return int(q1(site, "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue u USING (queue_id) "
                        "WHERE u.queue_name = %s AND m.headers ? 'pgflow_resent'", queue))


def why_missing(site: str, queue: str, origin_site: str, acked: list[int]) -> dict[str, Any]:
    """What a failed wait for arrivals prints: the missing ids, where they are at the origin,
    and both ends' replication state."""
    missing = sorted(set(acked) - {o for _, o, _ in arrived(site, queue, origin_site)})
    out: dict[str, Any] = {"missing": len(missing), "first missing": missing[:10]}
    for label, s, sql, params in (
        ("origin outbox rows of the missing", origin_site,
         "SELECT link_id, seq, xid::text, sent_at, resent FROM pgflow.link_outbox "
         "WHERE (origin ->> 'id')::bigint = ANY (%s) ORDER BY seq LIMIT 10", (missing,)),
        ("origin links", origin_site, "SELECT * FROM pgflow.links()", ()),
        ("origin link rows", origin_site, "SELECT link_id, seal_lsn, seal_snap::text, slot_seen_at, "
         "slot_lost_at, forwarded FROM pgflow.link", ()),
        ("origin slots", origin_site, "SELECT slot_name, active, restart_lsn, confirmed_flush_lsn, "
         "wal_status FROM pg_replication_slots", ()),
        ("origin insert lsn", origin_site, "SELECT pg_current_wal_insert_lsn()", ()),
        ("subscriptions", site, "SELECT subname, pid, received_lsn, latest_end_lsn, last_msg_receipt_time "
         "FROM pg_stat_subscription", ()),
        ("origins", site, "SELECT * FROM pg_replication_origin_status", ()),
        ("refused", site, "SELECT origin, sqlstate, reason FROM pgflow.link_refused "
         "ORDER BY refused_id DESC LIMIT 5", ()),
    ):
        try:
            out[label] = q(s, sql, *params)
        except psycopg.Error as e:
            out[label] = f"{e.sqlstate}: {e}"
    return out


def exactly_once(what: str, site: str, queue: str, origin_site: str, acked: list[int],
                 attempted: set[int] | None = None, seconds: float = 120) -> None:
    """Every id of acked arrived once, in order; nothing arrived from origin_site with an id
    of at least min(acked) that is not in attempted (default: acked)."""
    lo = min(acked)
    until(f"{what}: every acknowledged send arrives",
          lambda: {o for _, o, _ in arrived(site, queue, origin_site)} >= set(acked),
          seconds=seconds, detail=lambda: why_missing(site, queue, origin_site, acked))
    got = [o for _, o, _ in arrived(site, queue, origin_site) if o >= lo]
    check(f"{what}: none twice", len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicates")
    allowed = attempted if attempted is not None else set(acked)
    check(f"{what}: nothing that was not sent", set(got) <= allowed, sorted(set(got) - allowed)[:5])
    order = [o for o in got if o in set(acked)]
    check(f"{what}: in send order", order == sorted(order))
