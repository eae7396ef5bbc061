"""A database that cannot get a worker, and the status page as an operator's first screen (issue
#33, items 6 and 7). tests/metrics/metrics.sh starts a cluster of its own with
max_worker_processes = 4: the launcher, the exporter and Postgres's logical replication
launcher take three slots, so of the three databases with pgflow one gets a worker and the
others get none.

- worker_status() says why (the slots, max_worker_processes, what uses them), the endpoint has
  pgflow_worker_no_slot 1 and pgflow_worker_up 0 for them, the server log warns once per
  database, and the status page shows it in its summary and its worker table;
- with two alerts firing in the database that has a worker, the page's summary counts them, the
  troubled queues come first, and each alert shows its value, threshold and since;
- the page fits 1280 px: measured by Chromium in a copy of the page with one script appended
  (the page itself has none), and a screenshot at 1280 px goes to the test's output.

Waits are bounded polls of the server's own state.
"""
import os
import re
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser

from prometheus_client.parser import text_string_to_metric_families

PSQL = os.environ["PSQL"]
PORT = os.environ["PGPORT"]
MPORT = int(os.environ["METRICS_PORT"])
OUT_DIR = os.environ["OUT_DIR"]
LOG = os.environ["SERVER_LOG"]
DBS = ["slots_a", "slots_b", "slots_c"]
DEADLINE = 60.0


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def sql(query, db="postgres"):
    p = subprocess.run([PSQL, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h",
                        "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", db, "-c", query],
                       capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{query}: {p.stderr.strip()}")
    return [line.split("\t") for line in p.stdout.splitlines() if line != ""]


def poll(what, cond):
    end = time.monotonic() + DEADLINE
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def scrape(path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{MPORT}{path}", timeout=10) as r:
        return r.read().decode()


def samples():
    out = {}
    for fam in text_string_to_metric_families(scrape()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def chromium(*args):
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking",
                        f"--user-data-dir={OUT_DIR}/chromium-slots", *args],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        fail(f"chromium {args}: {p.stderr[-2000:]}")
    return p.stdout


class Page(HTMLParser):
    """The page's summary text, worker rows {database: (state, problem)} and queue rows in
    order [(database, queue, alert text)]."""

    def __init__(self):
        super().__init__()
        self.summary, self.workers, self.queues = "", {}, []
        self.in_summary, self.worker, self.queue, self.cell, self.cells = False, None, None, None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "p" and a.get("id") == "summary":
            self.in_summary = True
        elif tag == "tr" and "data-worker" in a:
            self.worker, self.cells = a["data-worker"], {}
        elif tag == "tr" and "data-queue" in a:
            self.queue, self.cells = (a["data-database"], a["data-queue"]), {}
        elif tag == "td" and (self.worker or self.queue):
            self.cell = a.get("class")
            if self.cell:
                self.cells[self.cell] = ""

    def handle_endtag(self, tag):
        if tag == "p":
            self.in_summary = False
        elif tag == "td":
            self.cell = None
        elif tag == "tr" and self.worker:
            self.workers[self.worker] = (self.cells.get("state", ""), self.cells.get("problem", ""))
            self.worker = None
        elif tag == "tr" and self.queue:
            self.queues.append((*self.queue, self.cells.get("alert", "")))
            self.queue = None

    def handle_data(self, data):
        if self.in_summary:
            self.summary += data
        if self.cell:
            self.cells[self.cell] += data


def page():
    p = Page()
    p.feed(scrape("/"))
    p.summary = " ".join(p.summary.split())
    return p


for db in DBS:
    sql(f"CREATE DATABASE {db}")
    sql("CREATE EXTENSION pgflow", db)


def status():
    return {r[0]: (r[1], r[2]) for r in sql(
        "SELECT datname, state, coalesce(detail, '') FROM pgflow.worker_status()"
        f" WHERE datname IN ({', '.join(repr(d) for d in DBS)})", DBS[0])}


def settled():
    st = status()
    running = [d for d, (s, _) in st.items() if s == "running"]
    starved = [d for d, (_, det) in st.items() if det.startswith("no free background worker slot")]
    return (running, starved) if len(st) == 3 and len(running) == 1 and len(starved) == 2 else None


running, starved = poll("one database with a worker and two without a slot", settled)
has, (a, b) = running[0], starved
detail = status()[a][1]
for part in ("max_worker_processes = 4", "used by", "pgflow launcher", "pgflow exporter",
             "pgflow worker", "docs/operations.md, Sizing"):
    if part not in detail:
        fail(f"worker_status() of {a} does not say '{part}': {detail}")
s = samples()
for db in starved:
    if s.get(("pgflow_worker_no_slot", frozenset({("database", db)}))) != 1:
        fail(f"pgflow_worker_no_slot of {db} is not 1")
    up = [v for (name, labels), v in s.items()
          if name == "pgflow_worker_up" and ("database", db) in labels]
    if up != [0]:
        fail(f"pgflow_worker_up of {db}: {up} (want one sample, 0)")
if s.get(("pgflow_worker_no_slot", frozenset({("database", has)}))) != 0:
    fail(f"pgflow_worker_no_slot of {has}, which has a worker, is not 0")
ok(f"{a} and {b} get no worker (max_worker_processes = 4): worker_status() says '{detail}'; "
   "the endpoint has pgflow_worker_no_slot 1 and pgflow_worker_up 0 for them")

# Two alerts firing in the database with a worker; a calm queue beside them.
sql("SELECT pgflow.create_queue('calm');"
    "SELECT pgflow.create_queue('deep', alert_depth => 1);"
    "SELECT pgflow.send_batch('deep', array_fill('{}'::jsonb, ARRAY[3]));"
    "SELECT pgflow.create_queue('poison', max_retries => 0, alert_dlq => 0);"
    "SELECT pgflow.send('poison', '{}');"
    "SELECT pgflow.nack('poison', (SELECT msg_id FROM pgflow.read('poison')), 'boom')", has)


def shows_alerts():
    p = page()
    return p if "2 alerts firing" in p.summary and len(p.queues) >= 3 else None


p = poll("the page with two alerts firing", shows_alerts)
for part in ("3 databases", "2 without a running worker", "2 alerts firing", "1 dead letters",
             f"({has} / deep)"):
    if part not in p.summary:
        fail(f"the summary lacks '{part}': {p.summary}")
for db in starved:
    state, problem = p.workers.get(db, ("", ""))
    if state not in ("wanted", "starting") or "no free background worker slot" not in problem:
        fail(f"the page's worker row of {db}: {state!r} {problem!r}")
if p.workers.get(has, ("", "x"))[1] != "":
    fail(f"the page shows a problem for {has}: {p.workers.get(has)}")
order = [q for _, q, _ in p.queues]
if order[-1] != "calm" or set(order[:2]) != {"deep", "poison"}:
    fail(f"the queues are not in order of trouble: {order}")
alerts = {q: text for _, q, text in p.queues}
if not re.fullmatch(r"depth 3 > 1 since \d\d:\d\d:\d\d UTC", alerts["deep"].strip()):
    fail(f"deep's alert: {alerts['deep']!r}")
if not re.fullmatch(r"dlq 1 > 0 since \d\d:\d\d:\d\d UTC", alerts["poison"].strip()):
    fail(f"poison's alert: {alerts['poison']!r}")
ok(f"the page's summary: '{p.summary}'; the starved databases' workers say why; troubled queues "
   f"first ({order}); each alert with value, threshold and since")

# Width at 1280 px: the page as served, plus one script that writes the document's scroll width
# into it (a copy only: the served page has no script), dumped by Chromium.
html = scrape("/").replace('<meta http-equiv="refresh" content="5">', "")
probe = html.replace("</body>", "<script>document.body.insertAdjacentHTML('beforeend', "
                     "'<p id=\"width\">' + document.documentElement.scrollWidth + ' ' + "
                     "document.documentElement.clientWidth + '</p>')</script></body>")
probe_path = os.path.join(OUT_DIR, "status-page-probe.html")
with open(probe_path, "w") as f:
    f.write(probe)
os.chmod(probe_path, 0o644)
dom = chromium("--dump-dom", "--window-size=1280,900", "--hide-scrollbars", f"file://{probe_path}")
m = re.search(r'<p id="width">(\d+) (\d+)</p>', dom)
if not m:
    fail("Chromium did not measure the page")
scroll, client = int(m.group(1)), int(m.group(2))
if scroll > client:
    fail(f"the page needs {scroll} px at a 1280 px window ({client} px wide): it scrolls sideways")
shot = os.path.join(OUT_DIR, "status-page-1280.png")
chromium(f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars",
         f"http://127.0.0.1:{MPORT}/")
if not os.path.getsize(shot):
    fail("no screenshot")
ok(f"the page fits 1280 px ({scroll} of {client} px wide); screenshot {shot}")

# With RUST_BACKTRACE=1 in the server's environment, a failing DDL statement passes through the
# utility hook untouched: Postgres's own fields, and no Rust backtrace in its DETAIL.
p = subprocess.run([PSQL, "-X", "-q", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", has,
                    "-c", "\\set VERBOSITY verbose", "-c", "CREATE TABLE t_ok (a int PRIMARY KEY)",
                    "-c", "INSERT INTO t_ok VALUES (1)",
                    "-c", "ALTER TABLE t_ok ADD CONSTRAINT t_ok_neg CHECK (a < 0)"],
                   capture_output=True, text=True)
err = p.stderr
if "CONSTRAINT NAME:  t_ok_neg" not in err or "TABLE NAME:  t_ok" not in err:
    fail(f"a DDL error lost its fields: {err}")
for bad in ("backtrace", "panicked", "rust_begin_unwind", "pgrx"):
    if bad in err:
        fail(f"a DDL error carries '{bad}' with RUST_BACKTRACE=1 set: {err}")
postmaster = open(os.path.join(os.path.dirname(LOG), "postmaster.pid")).readline().strip()
env = open(f"/proc/{postmaster}/environ", "rb").read()
if b"RUST_BACKTRACE=1" not in env:
    fail("the server does not have RUST_BACKTRACE=1 in its environment")
ok("with RUST_BACKTRACE=1 in the server's environment, a failing DDL statement keeps its fields "
   "and gains no backtrace")

# The launcher warned once per starved database, however often it tried again (every 10 s;
# the checks above took a while).
with open(LOG, errors="replace") as f:
    log = f.read()
for db in starved:
    n = log.count(f'no free background worker slot for database "{db}"')
    if n != 1:
        fail(f"the server log warns {n} times about {db} (want once)")
ok("the server log warned once for each database without a slot")
