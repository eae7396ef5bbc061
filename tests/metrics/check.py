"""The metrics layer's checks (tests/metrics/metrics.sh starts the cluster and runs this).

Every SQL call goes through psql over TCP; the endpoint is scraped with urllib and parsed with
prometheus_client's text parser. Waits are bounded polls of the server's own state, never a
sleep followed by an assertion.
"""
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

from prometheus_client.parser import text_string_to_metric_families

PSQL = os.environ["PSQL"]
PORT = os.environ["PGPORT"]
MPORT = int(os.environ["METRICS_PORT"])
DB = "pgflow_metrics"
DB_B = "pgflow_metrics_b"
DEADLINE = 60.0
DEPTHS = ["queue_length", "visible", "in_flight", "delayed", "waiting", "archive_length", "dlq_length"]


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def sql(query, db=DB, check=True):
    """Runs SQL; returns the rows as lists of strings."""
    p = subprocess.run(
        [PSQL, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
         "-p", PORT, "-U", "postgres", "-d", db, "-c", query],
        capture_output=True, text=True)
    if check and p.returncode != 0:
        fail(f"{query}: {p.stderr.strip()}")
    return [line.split("\t") for line in p.stdout.splitlines() if line != ""]


def setting(line):
    """ALTER SYSTEM line, then a reload (ALTER SYSTEM runs outside a transaction block)."""
    sql(f"ALTER SYSTEM {line}", db="postgres")
    sql("SELECT pg_reload_conf()", db="postgres")


def one(query, db=DB):
    rows = sql(query, db)
    return rows[0][0] if rows else None


def poll(what, cond):
    """Until cond() is truthy, at most DEADLINE seconds; returns its last value."""
    end = time.monotonic() + DEADLINE
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            fail(f"timed out waiting for: {what}")
        time.sleep(0.05)


def metrics(queue, exact, db=DB):
    cols = ", ".join(DEPTHS)
    row = sql(f"SELECT {cols}, exact FROM pgflow.metrics('{queue}', exact => {exact})", db)[0]
    return dict(zip(DEPTHS + ["exact"], row))


def agree(queue, db=DB):
    """metrics() from the statistics equals the exact count (and came from the statistics)."""
    fast, exact = metrics(queue, "false", db), metrics(queue, "true", db)
    if fast["exact"] != "f":
        return None
    f = {k: fast[k] for k in DEPTHS}
    e = {k: exact[k] for k in DEPTHS}
    return f == e and (f, e)


def scrape(path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{MPORT}{path}", timeout=30) as r:
        if r.status != 200:
            fail(f"GET {path}: {r.status}")
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain; version=0.0.4"):
            fail(f"content type {ctype}")
        return r.read().decode()


def parse(text):
    """{(name, frozenset(labels)): value} of every sample, through prometheus_client's parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class Rows(HTMLParser):
    """The status page's queue rows: {queue: {cell class: text}}."""

    def __init__(self):
        super().__init__()
        self.rows, self.row, self.cell = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-queue" in a:
            self.row = self.rows.setdefault((a["data-database"], a["data-queue"]), {})
        elif tag == "svg" and self.row is not None:
            self.row["chart_label"] = a.get("aria-label")
            self.row["chart"] = []
        elif tag == "polyline" and self.row is not None:
            # The depth chart: (x, y) per sample, y = 1 at the chart's max, 39 at zero.
            self.row["chart"] = [tuple(float(v) for v in p.split(",")) for p in a["points"].split()]
        elif tag == "td" and self.row is not None:
            self.cell = a.get("class")
            if self.cell:
                self.row[self.cell] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None
        elif tag == "tr":
            self.row = None

    def handle_data(self, data):
        if self.row is not None and self.cell:
            self.row[self.cell] += data.strip()


def chromium(*args):
    """Headless Chromium (Debian's), as the issue asks; returns its stdout."""
    p = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", f"--user-data-dir={os.environ['OUT_DIR']}/chromium",
         *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        fail(f"chromium {args}: {p.stderr[-2000:]}")
    return p.stdout


def raw(request, read_timeout=30.0):
    """Sends bytes on a plain socket; returns the status line of the answer ('' if none)."""
    with socket.create_connection(("127.0.0.1", MPORT), timeout=read_timeout) as s:
        try:
            if request:
                s.sendall(request)
        except OSError:
            pass  # the server may answer and close before taking all of it
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


# --- Setup -----------------------------------------------------------------------------------
for d in (DB, DB_B):
    sql(f"DROP DATABASE IF EXISTS {d}", db="postgres")
    sql(f"CREATE DATABASE {d}", db="postgres")
    sql("CREATE EXTENSION pgflow", db=d)
poll("the workers", lambda: one(
    f"SELECT count(*) = 2 FROM pgflow.worker_status() WHERE state = 'running' "
    f"AND datname IN ('{DB}', '{DB_B}')") == "t")
sql("""SELECT pgflow.create_queue('work', max_retries => 1, retry_delay => '0', retry_jitter => 0,
                                 visibility_timeout => '30 s');
       SELECT pgflow.create_queue('other');
       SELECT pgflow.create_queue('grouped');""")
sql("SELECT pgflow.create_queue('b_queue')", db=DB_B)

# --- A concurrent workload --------------------------------------------------------------------
# Each client does a fixed script; what it committed is known in advance.
PRODUCERS, SENDS = 4, 200
producer = f"""
DO $$
BEGIN
  FOR i IN 1..{SENDS} LOOP
    PERFORM pgflow.send('work', jsonb_build_object('i', i));
    IF i % 10 = 0 THEN
      BEGIN  -- a savepoint that rolls back: its send must not count
        PERFORM pgflow.send('work', '{{"lost": true}}');
        RAISE EXCEPTION 'roll back';
      EXCEPTION WHEN raise_exception THEN NULL;
      END;
    END IF;
  END LOOP;
END $$;
BEGIN; SELECT pgflow.send('work', '{{"rolled back": true}}'); ROLLBACK;
SELECT pgflow.send_batch('other', ARRAY['{{"a":1}}', '{{"a":2}}', '{{"a":3}}']::jsonb[]);
SELECT pgflow.send('grouped', '{{}}', group_key => 'g') FROM generate_series(1, 3);
"""
CONSUMERS = 3
consumer = """
DO $$
DECLARE m record; n int := 0;
BEGIN
  LOOP
    SELECT * INTO m FROM pgflow.read('work', qty => 1, wait => '1 s');
    EXIT WHEN NOT FOUND;
    n := n + 1;
    IF m.msg_id % 7 = 0 THEN
      PERFORM pgflow.nack('work', m.msg_id, 'boom');
    ELSIF m.msg_id % 11 = 0 THEN
      -- Handed back, then popped (whichever message pop takes first).
      PERFORM pgflow.set_vt('work', m.msg_id, '0');
      PERFORM pgflow.pop('work');
    ELSE
      PERFORM pgflow.archive('work', m.msg_id);
    END IF;
    COMMIT;
  END LOOP;
END $$;
"""
threads = []
errors = []


def run(script):
    p = subprocess.run(
        [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PORT, "-U",
         "postgres", "-d", DB], input=script, capture_output=True, text=True)
    if p.returncode != 0:
        errors.append(p.stderr)


for _ in range(PRODUCERS):
    threads.append(threading.Thread(target=run, args=(producer,)))
for _ in range(CONSUMERS):
    threads.append(threading.Thread(target=run, args=(consumer,)))
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    fail("workload: " + errors[0])

# What the consumers left is leased for 1 ms at a time until it is gone: each lease runs out
# (expiry, by the worker or the next read), the message is retried once (max_retries 1) and
# then dead-lettered. Then every dead letter is redriven and the same happens again; then the
# dead-letter queue is purged.
def drain(queue):
    sql(f"SELECT count(*) FROM pgflow.read('{queue}', vt => '1 ms', qty => 1000)")
    return one("SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id) "
               f"WHERE q.queue_name = '{queue}'") == "0"


sql("SELECT pgflow.send('work', '{\"expire\": 1}') FROM generate_series(1, 5)")
poll("'work' drained by expiries", lambda: drain("work"))
redriven = int(one("SELECT count(*) FROM pgflow.dlq_retry('work')"))
poll("'work' drained again", lambda: drain("work"))
purged_dead = int(one("SELECT pgflow.dlq_purge('work')"))
sql("SELECT pgflow.archive('grouped', (SELECT min(msg_id) FROM pgflow.message m JOIN pgflow.queue q "
    "USING (queue_id) WHERE q.queue_name = 'grouped'))")
purged = int(one("SELECT pgflow.purge_queue('other')"))

# A prepared transaction's send counts at its PREPARE (and commits here).
sql("BEGIN; SELECT pgflow.send('other', '{}'); PREPARE TRANSACTION 'p1';")
sql("COMMIT PREPARED 'p1'")

for q in ("work", "other", "grouped"):
    f, e = poll(f"metrics('{q}') agreeing with the exact count", lambda q=q: agree(q))
ok(f"after the workload metrics() from the statistics equals metrics(exact => true): {f}")

# Counters against what the clients did.
c = dict(zip(
    ["sent", "delivered", "archived", "deleted", "nacked", "expired", "dead_lettered", "redriven"],
    map(int, sql("SELECT sent, delivered, archived, deleted, nacked, expired, dead_lettered, "
                 "redriven FROM pgflow.metrics('work')")[0])))
want_sent = PRODUCERS * SENDS + 5
if c["sent"] != want_sent:
    fail(f"sent {c['sent']}, want {want_sent} (rolled-back sends must not count)")
archived_rows = int(one("SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id) "
                        "WHERE q.queue_name = 'work'"))
if c["archived"] != archived_rows:
    fail(f"archived {c['archived']}, archive rows {archived_rows}")
dead_rows = int(one("SELECT count(*) FROM pgflow.dead d JOIN pgflow.queue q USING (queue_id) "
                    "WHERE q.queue_name = 'work'"))
if c["dead_lettered"] != dead_rows + redriven + purged_dead:
    fail(f"dead_lettered {c['dead_lettered']}, want {dead_rows} + {redriven} + {purged_dead}")
if c["redriven"] != redriven or redriven == 0:
    fail(f"redriven {c['redriven']}, want {redriven} (> 0)")
if c["expired"] < 5 or c["nacked"] == 0 or c["deleted"] == 0:
    fail(f"expired/nacked/deleted: {c}")
# Every message sent or redriven to 'work' left it: archived, dead-lettered or deleted (pop).
if c["sent"] + c["redriven"] != c["archived"] + c["dead_lettered"] + c["deleted"]:
    fail(f"sent + redriven != archived + dead_lettered + deleted: {c}")
other = dict(zip(["sent", "deleted"], map(int, sql(
    "SELECT sent, deleted FROM pgflow.metrics('other')")[0])))
if other != {"sent": PRODUCERS * 3 + 1, "deleted": purged}:
    fail(f"other: {other}, want sent {PRODUCERS * 3 + 1}, deleted {purged}")
ok(f"counters match the clients: {c}")

# --- The endpoint ----------------------------------------------------------------------------
text = scrape()
s = parse(text)
for q in ("work", "other", "grouped"):
    m = metrics(q, "true")
    lab = {"database": DB, "queue": q}
    for state, col in (("ready", "visible"), ("delayed", "delayed"), ("in_flight", "in_flight"),
                       ("waiting", "waiting"), ("dead", "dlq_length"), ("archived", "archive_length")):
        got = sample(s, "pgflow_queue_messages", state=state, **lab)
        if got is None or int(got) != int(m[col]):
            fail(f"{q} {state}: endpoint {got}, metrics {m[col]}")
    for event in ("sent", "archived", "dead_lettered"):
        got = sample(s, "pgflow_messages_total", event=event, **lab)
        if q == "work" and int(got) != c[event]:
            fail(f"{q} {event}: endpoint {got}, metrics {c[event]}")
lab = {"database": DB, "queue": "work"}
count = sample(s, "pgflow_wait_seconds_count", **lab)
inf = sample(s, "pgflow_wait_seconds_bucket", le="+Inf", **lab)
if not count or count != inf:
    fail(f"wait histogram: count {count}, +Inf bucket {inf}")
e2e = sample(s, "pgflow_end_to_end_seconds_count", **lab)
if e2e != c["archived"]:
    fail(f"end-to-end histogram count {e2e}, archived {c['archived']}")
# Every archive of 'work' came from the session that had leased the message.
processing = sample(s, "pgflow_processing_seconds_count", **lab)
if processing != c["archived"]:
    fail(f"processing histogram count {processing}, archived {c['archived']}")
if sample(s, "pgflow_worker_up", database=DB, state="running") != 1:
    fail("pgflow_worker_up")
if sample(s, "pgflow_queue_messages", database=DB_B, queue="b_queue", state="ready") != 0:
    fail("the other database's queue is not served")
ok(f"the endpoint parses ({len(text)} bytes) and agrees with metrics(); wait count {count}")

# The oldest ready message, as the worker's tick notes it: exactly its enqueue time.
want = float(one("SELECT extract(epoch FROM min(m.enqueued_at)) FROM pgflow.message m "
                 "JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = 'other' AND m.state = 'r'"))


def oldest_on_endpoint():
    got = sample(parse(scrape()), "pgflow_queue_oldest_ready_timestamp_seconds", database=DB,
                 queue="other")
    return got is not None and abs(got - want) < 1e-5


poll("the oldest ready message on the endpoint", oldest_on_endpoint)
if sample(parse(scrape()), "pgflow_queue_oldest_ready_timestamp_seconds", database=DB, queue="work"):
    fail("an oldest ready message for 'work', which has none")
ages = sql("SELECT (SELECT oldest_ready_age_sec IS NOT NULL FROM pgflow.metrics('other')), "
           "(SELECT oldest_ready_age_sec IS NULL FROM pgflow.metrics('work')), "
           "(SELECT oldest_ready_age_sec IS NOT NULL FROM pgflow.metrics('other', exact => true))")[0]
if ages != ["t", "t", "t"]:
    fail(f"oldest_ready_age_sec: {ages}")
ok("the oldest ready message's enqueue time is on the endpoint and its age in metrics()")

# metrics_text() gives the same queue families for its database.
own = parse(one("SELECT pgflow.metrics_text()"))
for key, v in own.items():
    if key[0].startswith(("pgflow_queue_messages", "pgflow_messages_total", "pgflow_wait_seconds")):
        if s.get(key) != v:
            fail(f"metrics_text {key}: {v}, endpoint {s.get(key)}")
if any(dict(k[1]).get("database") == DB_B for k in own):
    fail("metrics_text shows another database")
ok("metrics_text() equals the endpoint for its database")

# promtool's linter on the endpoint's text (naming, HELP and TYPE lines, suffixes).
lint = subprocess.run([os.environ["PROMTOOL"], "check", "metrics"], input=text,
                      capture_output=True, text=True)
if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
    fail(f"promtool check metrics: {lint.stdout}{lint.stderr}")
ok("promtool check metrics finds nothing to say about the endpoint's text")

# --- Alerts ----------------------------------------------------------------------------------
# A listener on channel pgflow_alerts: psql prints a notification after the command during
# which it arrived.
listener = subprocess.Popen(
    [PSQL, "-X", "-q", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", DB, "-c",
     "LISTEN pgflow_alerts"] + ["-c", "SELECT pg_sleep(0.5)"] * 120,
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
notes = []
threading.Thread(target=lambda: notes.extend(iter(listener.stdout.readline, "")), daemon=True).start()
sql("SELECT pgflow.send('work', '{\"poison\": 1}')")
sql("SELECT pgflow.nack('work', msg_id, 'poison', read_ct => read_ct) FROM pgflow.read('work', qty => 1)")
poll("the poison message retried", lambda: drain("work"))
poll("the poison message dead", lambda: int(one("SELECT count(*) FROM pgflow.dead")) > 0)
bad = sql("SELECT pgflow.alter_queue('work', alert_dlq => -2)", check=False)
if bad:
    fail("alert_dlq -2 accepted")
sql("SELECT pgflow.alter_queue('work', alert_dlq => 0, alert_age => '1 hour')")
firing = poll("the dlq alert", lambda: sql(
    "SELECT alert, value, threshold FROM pgflow.alerts() WHERE queue_name = 'work'"))
if firing != [["dlq", "1", "0"]]:
    fail(f"alerts(): {firing}")
poll("the endpoint's alert line", lambda: sample(parse(scrape()), "pgflow_alert_firing_since_timestamp_seconds",
                                                  database=DB, queue="work", alert="dlq"))
poll("a firing notification", lambda: any('"state" : "firing"' in n and '"queue" : "work"' in n for n in notes))
# The status page, loaded in headless Chromium while the alert fires: its numbers are
# metrics()'s, and a screenshot goes to the test's output.
def page_agrees():
    rows = Rows()
    rows.feed(chromium("--dump-dom", f"http://127.0.0.1:{MPORT}/"))
    row = rows.rows.get((DB, "work"))
    m = metrics("work", "true")
    want = {"ready": m["visible"], "delayed": m["delayed"], "in_flight": m["in_flight"],
            "waiting": m["waiting"], "dead": m["dlq_length"]}
    # The alert with its value, threshold and since.
    return (row is not None and all(row.get(k) == v for k, v in want.items())
            and row.get("alert", "").startswith("dlq 1 > 0 since ") and row)


row = poll("the status page showing metrics() and the alert", page_agrees)
shot = os.path.join(os.environ["OUT_DIR"], "status-page.png")
chromium(f"--screenshot={shot}", "--window-size=1500,700", "--hide-scrollbars",
         f"http://127.0.0.1:{MPORT}/")
if not os.path.getsize(shot):
    fail("no screenshot")
ok(f"headless Chromium shows the page's numbers equal to metrics() ({row}); screenshot {shot}")

# The chart: the exporter samples every queue's depth every 2 s into a ring, and draws it.
sql("SELECT pgflow.create_queue('chart')")
sql("SELECT pgflow.send_batch('chart', array_fill('{}'::jsonb, ARRAY[6]))")


def chart_row():
    rows = Rows()
    rows.feed(chromium("--dump-dom", f"http://127.0.0.1:{MPORT}/"))
    return rows.rows.get((DB, "chart")) or {}


def chart_at(top):
    """The chart's newest sample is at the right edge, at the top (depth = max) or bottom (0),
    and the chart's max is the 6 messages sent."""
    row = chart_row()
    pts = row.get("chart") or []
    return (len(pts) >= 2 and row.get("chart_label") == "depth, max 6"
            and pts[-1] == (200.0, 1.0 if top else 39.0) and row)


poll("the chart's newest sample at 6 messages", lambda: chart_at(True))
sql("SELECT pgflow.archive('chart', array_agg(msg_id)) FROM pgflow.read('chart', qty => 6)")
row = poll("the chart's newest sample at 0 messages", lambda: chart_at(False))
if not any(y == 1.0 for _, y in row["chart"][:-1]):
    fail(f"the chart lost the samples at 6 messages: {row['chart']}")
xs = [x for x, _ in row["chart"]]
if xs != sorted(xs) or xs[0] != 0.0:
    fail(f"the chart's samples are not in time order from the left edge: {row['chart']}")
ok(f"the status page's chart drew the queue's depth over time ({len(xs)} samples, 6 then 0)")
sql("SELECT pgflow.drop_queue('chart')")

sql("SELECT pgflow.dlq_purge('work')")
poll("the alert cleared", lambda: not sql("SELECT 1 FROM pgflow.alerts()"))
poll("a resolved notification", lambda: any('"state" : "resolved"' in n for n in notes))
if sample(parse(scrape()), "pgflow_alert_firing_since_timestamp_seconds", database=DB, queue="work",
          alert="dlq") is not None:
    fail("the endpoint still shows the cleared alert")
listener.kill()
log = open(os.path.join(os.environ["PGDATA_DIR"], "server.log")).read()
if 'pgflow alert firing: queue "work" dlq' not in log or 'pgflow alert resolved: queue "work" dlq' not in log:
    fail("no log line for the alert")
sql("SELECT pgflow.alter_queue('work', alert_dlq => -1, alert_age => '0')")
if sql("SELECT alert_dlq, alert_age FROM pgflow.list_queues() WHERE queue_name = 'work'") != [["", ""]]:
    fail("alert thresholds not removed")
ok("alert_dlq fires once (alerts(), a NOTIFY, a log line, the endpoint) and clears once")

# --- Bad requests ----------------------------------------------------------------------------
for request, want in ((b"garbage\r\n\r\n", "400"), (b"\x00\xff\xfe junk\r\n\r\n", "400"),
                      (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
                      (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
                      (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "431"),
                      (b"GET /metrics HTTP/1.1\r\n", "408")):
    status = raw(request)
    if not status.startswith("HTTP/1.1 " + want):
        fail(f"{request[:30]!r}: {status!r}, want {want}")
raw(b"")  # connects and says nothing
try:
    urllib.request.urlopen(f"http://127.0.0.1:{MPORT}/nothing", timeout=30)
    fail("/nothing answered 200")
except urllib.error.HTTPError as e:
    if e.code != 404:
        fail(f"/nothing: {e.code}")
scrape()
ok("bad requests get 400, 404, 405, 408 and 431, and the endpoint keeps serving")

# --- A slow client and silent ones do not hold the endpoint ----------------------------------
# One client trickles a request line, a byte every 1.5 s (each byte well within 2 s of the
# last), and ten connect and say nothing. Meanwhile every scrape is answered: the endpoint
# serves connections side by side, each with one deadline from its accept. The slow client is
# cut off (408, or a close) at its request deadline, before its 8 s of bytes are out; the silent
# ones are closed. An endpoint that served one connection at a time, with a limit per read,
# served the slow client for its whole trickle and then each silent one for 2 s: the probes
# below time out.
TRICKLE, EVERY, PROBES = 8.0, 1.5, 5
trickled = {}


def trickle():
    line = b"GET /metrics HTTP/1.1\r\n"
    start = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", MPORT), timeout=5)
    except OSError as e:
        trickled.update(error=f"connect: {e}", connected=True)
        return
    sent = 0
    with s:
        while sent < len(line) and time.monotonic() - start < TRICKLE:
            try:
                s.sendall(line[sent:sent + 1])
                sent += 1
                trickled["connected"] = True
                ready, _, _ = select.select([s], [], [], EVERY)
                if not ready:
                    continue
                data = s.recv(4096)
                end = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "EOF"
            except OSError as e:
                end = f"reset ({e})"  # the endpoint closed the connection under it
            trickled.update(end=end, at=time.monotonic() - start, sent=sent, connected=True)
            return
    trickled.update(end=None, at=time.monotonic() - start, sent=sent, connected=True)


slow = threading.Thread(target=trickle, daemon=True)
slow.start()
poll("the slow client connected", lambda: trickled.get("connected"))
if "error" in trickled:
    fail(f"the slow client: {trickled['error']}")
silent = [socket.create_connection(("127.0.0.1", MPORT), timeout=5) for _ in range(10)]
answered = 0
for _ in range(PROBES):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{MPORT}/metrics", timeout=5) as r:
            if r.status != 200 or not r.read():
                fail(f"a scrape beside the slow and silent clients: {r.status}, empty")
            answered += 1
    except OSError as e:  # URLError, a timeout, a reset
        fail(f"with a slow client and ten silent ones open, scrape {answered + 1} of {PROBES} "
             f"not answered within 5 s: {e!r}")
# The silent ones are closed by the endpoint (EOF, or a reset), without an answer.
for conn in silent:
    try:
        got = conn.recv(4096)
    except ConnectionResetError:
        got = b""
    except OSError as e:
        fail(f"a silent connection not closed by the endpoint: {e}")
    if got:
        fail(f"a silent connection got an answer: {got[:40]!r}")
    conn.close()
slow.join(TRICKLE + 5)
if slow.is_alive() or trickled.get("end") is None or trickled["at"] >= TRICKLE:
    fail(f"the slow client was not cut off before its {TRICKLE:.0f} s of bytes were out: {trickled}")
if not (trickled["end"].startswith("HTTP/1.1 408") or trickled["end"] == "EOF"
        or trickled["end"].startswith("reset")):
    fail(f"the slow client got {trickled['end']!r}, want a 408 or a close")
scrape()
ok(f"a client trickling its request and ten silent ones hold no scrape ({answered} of {PROBES} "
   f"answered meanwhile); the slow client got {trickled['end']!r} after {trickled['at']:.1f} s "
   f"and {trickled['sent']} bytes, the silent ones a close")

# --- The database filter ---------------------------------------------------------------------
setting(f"SET pgflow.metrics_databases = '{DB_B}'")
poll("the filter", lambda: not any(dict(k[1]).get("database") == DB for k in parse(scrape()))
     and any(dict(k[1]).get("database") == DB_B for k in parse(scrape())))
setting("RESET pgflow.metrics_databases")
poll("the filter reset", lambda: any(dict(k[1]).get("database") == DB for k in parse(scrape())))
ok("pgflow.metrics_databases narrows what the endpoint serves")

# --- pgflow.stats off, then on ---------------------------------------------------------------
setting("SET pgflow.stats = off")
poll("metrics() counting", lambda: metrics("work", "false")["exact"] == "t")
sql("SELECT pgflow.send('work', '{}') FROM generate_series(1, 7)")
setting("RESET pgflow.stats")
poll("metrics('work') agreeing after the rebuild", lambda: agree("work"))
ok("with pgflow.stats off metrics() counts rows; back on, the rebuild makes it agree again")

# --- 1,100 queues in one database -------------------------------------------------------------
# The shared table holds 1,024 queues of all databases, and its last 128 entries go only to
# databases holding fewer: one database's 1,100 queues take what is left up to there, and a
# queue created afterwards in another database still has statistics (issue #34: before, it got
# none). What does not fit is counted on the endpoint and said by worker_status().
sql("SELECT count(pgflow.create_queue('many_' || i)) FROM generate_series(1, 1100) i;"
    "SELECT count(pgflow.send('many_' || i, '{}')) FROM generate_series(1, 1100) i")
sql("SELECT pgflow.create_queue('b_late'); SELECT pgflow.send('b_late', '{}')", db=DB_B)
t0 = time.monotonic()
text = scrape()
took = time.monotonic() - t0
s = parse(text)
served = {(dict(k[1]).get("database"), dict(k[1]).get("queue"))
          for k in s if k[0] == "pgflow_queue_messages"}
many = len([q for d, q in served if d == DB and q and q.startswith("many_")])
if len(served) != 1024 - 128 + 1:
    fail(f"{len(served)} queues served, {many} of them many_ (want 897: up to the reserve, and b_late)")
stray = {dict(k[1]).get("database") for k in s} - {None, DB, DB_B}
if stray:
    fail(f"the endpoint names databases where pgflow is not created: {stray}")
if sample(s, "pgflow_queue_messages", database=DB_B, queue="b_late", state="ready") != 1:
    fail("b_late, created in another database after the 1,100, has no statistics")
refused = sample(s, "pgflow_stats_refused_total", database=DB)
if not refused:
    fail(f"the endpoint does not count the refused lookups of {DB}: {refused}")
detail = one(f"SELECT detail FROM pgflow.worker_status() WHERE datname = '{DB}'")
if "statistics:" not in (detail or ""):
    fail(f"worker_status() does not say what did not fit: {detail!r}")
# The shared tables' room, as worker_status() has it (all databases).
room = one(f"SELECT stats_free || ' ' || cursor_free FROM pgflow.worker_status() WHERE datname = '{DB}'")
shown = (sample(s, "pgflow_shm_free_entries", table="stats"), sample(s, "pgflow_shm_free_entries", table="cursor"))
if None in shown or sample(s, "pgflow_cursor_refused_total") is None \
        or sample(s, "pgflow_shm_free_entries", table="notify") is None:
    fail(f"the endpoint lacks the shared tables' room: {shown}")
if shown[0] > 128:
    fail(f"with 1,100 queues the statistics table shows {shown[0]} free entries (its reserve is 128)")
ok(f"the shared tables' room: worker_status() {room}, the endpoint {shown[0]:.0f} {shown[1]:.0f}")
ok(f"1,100 queues in one database: {many} served up to the reserve, one of another database "
   f"created after them served too; {refused:.0f} refused lookups counted and worker_status() says "
   f"so; one scrape of {len(text)} bytes in {took * 1000:.0f} ms")

# --- A crash: shared memory starts over, the worker rebuilds ---------------------------------
before = one("SELECT stats_reset_at FROM pgflow.metrics('work')")
victim = subprocess.Popen(
    [PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", DB, "-c",
     "SELECT pg_sleep(600)"],
    env=dict(os.environ, PGAPPNAME="pgflow_metrics_victim"),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
pid = int(poll("the victim's backend", lambda: one(
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgflow_metrics_victim'")))
os.kill(pid, 9)
victim.wait()


def back():
    p = subprocess.run([PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d",
                        DB, "-c", "SELECT 1"], capture_output=True, text=True)
    return p.returncode == 0


poll("the server back after the crash", back)
poll("metrics('work') agreeing after the crash", lambda: agree("work"))
after = sql("SELECT stats_reset_at > %s::timestamptz, sent FROM pgflow.metrics('work')"
            % ("'" + before + "'"))[0]
if after != ["t", "0"]:
    fail(f"after the crash: reset later {after[0]}, sent {after[1]} (want t, 0)")


def endpoint_back():
    try:
        return sample(parse(scrape()), "pgflow_queue_messages", database=DB, queue="many_1",
                      state="ready") == 1
    except (urllib.error.URLError, ConnectionError):
        return False


poll("the endpoint back", endpoint_back)
ok("after a crash the worker rebuilt the gauges from the tables; counters start again")
