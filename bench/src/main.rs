//! pgflow-bench: pgflow, pgmq and PgQ side by side on one server, same settings, same payload.
//!
//! `bench/run.sh` starts the cluster, installs the three systems and runs this binary; see
//! `bench/README.md` for what each workload measures. Only ratios between systems measured in
//! the same run mean anything: these machines are shared and noisy.
//!
//! Usage: pgflow-bench --dsn DSN --mode smoke|quick|full --pgbench PATH --out DIR
//!                     [--systems pgflow,pgmq,pgq] [--workloads W1,W3,...] [--label TEXT]
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde::Serialize;

/// 277 bytes: a seeds' proposal_for_consensus message, valid under its contract (W9).
const PAYLOAD: &str = r#"{"type":"proposal_for_consensus","proposal_id":"123e4567-e89b-12d3-a456-426614174000","instance_id":"singularity_1","agent_type":"BugFixerAgent","code_change":{"file":"lib/cache.ex","change":"bound table"},"impact_score":8.0,"risk_score":1.0,"timestamp":"2026-11-22T10:00:00Z"}"#;
const QUEUE: &str = "bench";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ------------------------------------------------------------------------------------------
// Modes
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Smoke,
    Quick,
    Full,
}

/// Sizes and durations per mode. Full is what the README table comes from.
struct Plan {
    repeats: usize,
    w12_secs: u32,
    w12_clients: Vec<u32>,
    w3_backlog: i64,
    w3_consumers: Vec<usize>,
    w3_batches: Vec<i32>,
    w4_secs: u64,
    w4_consumers: Vec<usize>,
    w5_secs: u64,
    w5_rate: u64,
    w5_idle_secs: u64,
    w7_before: u64,
    w7_hold: u64,
    w7_after: u64,
    w8_queues: usize,
    w8_secs: u64,
}

impl Plan {
    fn for_mode(mode: Mode) -> Plan {
        match mode {
            Mode::Smoke => Plan {
                repeats: 1,
                w12_secs: 1,
                w12_clients: vec![1, 2],
                w3_backlog: 500,
                w3_consumers: vec![1, 4],
                w3_batches: vec![10],
                w4_secs: 2,
                w4_consumers: vec![2],
                w5_secs: 1,
                w5_rate: 100,
                w5_idle_secs: 1,
                w7_before: 1,
                w7_hold: 2,
                w7_after: 1,
                w8_queues: 20,
                w8_secs: 1,
            },
            Mode::Quick => Plan {
                repeats: 2,
                w12_secs: 5,
                w12_clients: vec![1, 8],
                w3_backlog: 20_000,
                w3_consumers: vec![1, 4, 16, 64],
                w3_batches: vec![10, 100],
                w4_secs: 15,
                w4_consumers: vec![2, 4],
                w5_secs: 10,
                w5_rate: 500,
                w5_idle_secs: 5,
                w7_before: 10,
                w7_hold: 30,
                w7_after: 15,
                w8_queues: 1000,
                w8_secs: 30,
            },
            Mode::Full => Plan {
                repeats: 3,
                w12_secs: 10,
                w12_clients: vec![1, 8],
                w3_backlog: 200_000,
                w3_consumers: vec![1, 4, 16, 64],
                w3_batches: vec![10, 100],
                w4_secs: 60,
                w4_consumers: vec![2, 4],
                w5_secs: 30,
                w5_rate: 500,
                w5_idle_secs: 10,
                w7_before: 60,
                w7_hold: 300,
                w7_after: 60,
                w8_queues: 1000,
                w8_secs: 300,
            },
        }
    }
}

// ------------------------------------------------------------------------------------------
// The three systems behind one interface
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
enum Sys {
    Pgflow,
    Pgmq,
    Pgq,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Pgflow => "pgflow",
            Sys::Pgmq => "pgmq",
            Sys::Pgq => "PgQ",
        }
    }

    /// PgQ has no competing consumers: every registered consumer sees every event. Where a
    /// workload asks for N competing consumers, PgQ runs its one consumer.
    fn competing_consumers(self) -> bool {
        self != Sys::Pgq
    }

    fn recreate(self, c: &mut Client, queue: &str) -> Res<()> {
        match self {
            Sys::Pgflow => {
                c.execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])?;
                c.execute("SELECT pgflow.create_queue($1)", &[&queue])?;
            }
            Sys::Pgmq => {
                c.execute(
                    "SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() WHERE queue_name = $1",
                    &[&queue],
                )?;
                c.execute("SELECT pgmq.create($1)", &[&queue])?;
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.drop_queue(queue_name, true) FROM pgq.queue WHERE queue_name = $1",
                    &[&queue],
                )?;
                c.execute("SELECT pgq.create_queue($1)", &[&queue])?;
                c.execute("SELECT pgq.register_consumer($1, 'bench')", &[&queue])?;
                // Tick on every call of the ticker thread that has 100 new events or 10 ms of lag.
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_count', '100')",
                    &[&queue],
                )?;
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '10 milliseconds')",
                    &[&queue],
                )?;
            }
        }
        Ok(())
    }

    fn drop(self, c: &mut Client, queue: &str) -> Res<()> {
        match self {
            Sys::Pgflow => {
                c.execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])?;
            }
            Sys::Pgmq => {
                c.execute(
                    "SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() WHERE queue_name = $1",
                    &[&queue],
                )?;
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.drop_queue(queue_name, true) FROM pgq.queue WHERE queue_name = $1",
                    &[&queue],
                )?;
            }
        }
        Ok(())
    }

    /// One statement sending one message; $1 queue, $2 payload. Returns the id.
    fn send_sql(self) -> &'static str {
        match self {
            Sys::Pgflow => "SELECT pgflow.send($1, $2::text::jsonb)",
            Sys::Pgmq => "SELECT pgmq.send($1, $2::text::jsonb)",
            Sys::Pgq => "SELECT pgq.insert_event($1, 'proposal', $2::text)",
        }
    }

    /// pgbench script bodies for W1 (one message) and W2 (a batch of 100).
    fn pgbench_script(self, batch: u32) -> String {
        let p = PAYLOAD.replace('\'', "''");
        match (self, batch) {
            (Sys::Pgflow, 1) => format!("SELECT pgflow.send('{QUEUE}', '{p}'::jsonb);\n"),
            (Sys::Pgmq, 1) => format!("SELECT pgmq.send('{QUEUE}', '{p}'::jsonb);\n"),
            (Sys::Pgq, 1) => format!("SELECT pgq.insert_event('{QUEUE}', 'proposal', '{p}');\n"),
            (Sys::Pgflow, n) => format!(
                "SELECT count(*) FROM pgflow.send_batch('{QUEUE}', array_fill('{p}'::jsonb, ARRAY[{n}]));\n"
            ),
            (Sys::Pgmq, n) => format!(
                "SELECT count(*) FROM pgmq.send_batch('{QUEUE}', array_fill('{p}'::jsonb, ARRAY[{n}]));\n"
            ),
            (Sys::Pgq, n) => format!(
                "SELECT count(pgq.insert_event('{QUEUE}', 'proposal', '{p}')) FROM generate_series(1, {n});\n"
            ),
        }
    }

    /// Fills the queue with n messages. PgQ gets a tick after every `batch` events, so its
    /// consumer receives batches of that size (PgQ's own way of sizing a read).
    fn prefill(self, c: &mut Client, n: i64, batch: i32) -> Res<()> {
        match self {
            Sys::Pgflow | Sys::Pgmq => {
                let sql = if self == Sys::Pgflow {
                    "SELECT count(*) FROM pgflow.send_batch($1, array_fill($2::text::jsonb, ARRAY[$3::int]))"
                } else {
                    "SELECT count(*) FROM pgmq.send_batch($1, array_fill($2::text::jsonb, ARRAY[$3::int]))"
                };
                let mut left = n;
                while left > 0 {
                    let k = left.min(1000) as i32;
                    c.execute(sql, &[&QUEUE, &PAYLOAD, &k])?;
                    left -= k as i64;
                }
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_count', $2)",
                    &[&QUEUE, &batch.to_string()],
                )?;
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '1 hour')",
                    &[&QUEUE],
                )?;
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch as i64) as i32;
                    c.execute(
                        "SELECT count(pgq.insert_event($1, 'proposal', $2)) FROM generate_series(1, $3)",
                        &[&QUEUE, &PAYLOAD, &k],
                    )?;
                    c.execute("SELECT pgq.ticker($1)", &[&QUEUE])?;
                    left -= k as i64;
                }
                // Close the last batch.
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '0')",
                    &[&QUEUE],
                )?;
                c.execute("SELECT pgq.ticker($1)", &[&QUEUE])?;
            }
        }
        Ok(())
    }

    /// The tables (with their indexes and TOAST) that hold this system's queue.
    fn relations(self, c: &mut Client) -> Res<Vec<String>> {
        Ok(match self {
            Sys::Pgflow => vec!["pgflow.message".into(), "pgflow.archive".into()],
            Sys::Pgmq => vec![format!("pgmq.q_{QUEUE}"), format!("pgmq.a_{QUEUE}")],
            Sys::Pgq => c
                .query(
                    "SELECT format('%I.%I', n.nspname, t.relname)
                       FROM pgq.queue q
                       JOIN pg_class t ON t.relname ~ ('^' || split_part(q.queue_data_pfx, '.', 2) || '(_[0-9]+)?$')
                       JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'pgq'
                      WHERE q.queue_name = $1 AND t.relkind = 'r'",
                    &[&QUEUE],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        })
    }

    /// Returns the system's tables to a just-created state (VACUUM FULL), so every measured run
    /// starts alike. pgmq and PgQ get new tables per queue; pgflow keeps one shared table whose
    /// dead space from the previous run would otherwise count against it.
    fn reset(self, c: &mut Client) -> Res<()> {
        for r in self.relations(c)? {
            c.batch_execute(&format!("VACUUM FULL ANALYZE {r}"))?;
        }
        c.batch_execute("CHECKPOINT")?;
        Ok(())
    }

    /// The table live messages sit in (for bytes per message).
    fn live_relations(self, c: &mut Client) -> Res<Vec<String>> {
        Ok(match self {
            Sys::Pgflow => vec!["pgflow.message".into()],
            Sys::Pgmq => vec![format!("pgmq.q_{QUEUE}")],
            Sys::Pgq => self.relations(c)?,
        })
    }
}

/// A consumer connection of one system: takes a batch, handles it, acknowledges it.
struct Consumer {
    sys: Sys,
    client: Client,
    qty: i32,
}

impl Consumer {
    fn new(sys: Sys, dsn: &str, qty: i32) -> Res<Consumer> {
        Ok(Consumer {
            sys,
            client: connect(dsn)?,
            qty,
        })
    }

    fn backend_pid(&mut self) -> Res<i32> {
        Ok(self
            .client
            .query_one("SELECT pg_backend_pid()", &[])?
            .get(0))
    }

    /// One read-and-acknowledge round. Returns the ids consumed (empty: nothing available).
    fn round(&mut self) -> Res<Vec<i64>> {
        match self.sys {
            Sys::Pgflow => {
                let ids: Vec<i64> = self
                    .client
                    .query(
                        "SELECT msg_id FROM pgflow.read($1, '30 seconds', $2)",
                        &[&QUEUE, &self.qty],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if !ids.is_empty() {
                    self.client
                        .execute("SELECT pgflow.archive($1, $2::bigint[])", &[&QUEUE, &ids])?;
                }
                Ok(ids)
            }
            Sys::Pgmq => {
                let ids: Vec<i64> = self
                    .client
                    .query(
                        "SELECT msg_id FROM pgmq.read($1, 30, $2)",
                        &[&QUEUE, &self.qty],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if !ids.is_empty() {
                    self.client
                        .execute("SELECT pgmq.archive($1, $2::bigint[])", &[&QUEUE, &ids])?;
                }
                Ok(ids)
            }
            Sys::Pgq => loop {
                let batch: Option<i64> = self
                    .client
                    .query_one("SELECT pgq.next_batch($1, 'bench')", &[&QUEUE])?
                    .get(0);
                let Some(batch) = batch else {
                    return Ok(Vec::new());
                };
                let ids: Vec<i64> = self
                    .client
                    .query("SELECT ev_id FROM pgq.get_batch_events($1)", &[&batch])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                self.client
                    .execute("SELECT pgq.finish_batch($1)", &[&batch])?;
                // An empty batch (a tick with no events) is not the end of the queue.
                if !ids.is_empty() {
                    return Ok(ids);
                }
            },
        }
    }

    /// A read that waits for work the way each system offers: pgmq's read_with_poll (polling
    /// every 10 ms), pgflow's long-poll read (asleep on its latch until a send commits), PgQ's
    /// next_batch after a tick, polled every 10 ms.
    fn wait_round(&mut self, stop: &AtomicBool) -> Res<Vec<i64>> {
        loop {
            let ids = match self.sys {
                Sys::Pgmq => self.read_and_archive(
                    "SELECT msg_id FROM pgmq.read_with_poll($1, 30, $2, 1, 10)",
                    "SELECT pgmq.archive($1, $2::bigint[])",
                )?,
                Sys::Pgflow => self.read_and_archive(
                    "SELECT msg_id FROM pgflow.read($1, '30 s', $2, wait => '1 s')",
                    "SELECT pgflow.archive($1, $2::bigint[])",
                )?,
                _ => self.round()?,
            };
            if !ids.is_empty() || stop.load(Ordering::Relaxed) {
                return Ok(ids);
            }
            if self.sys == Sys::Pgq {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// One waiting read ($1 queue, $2 qty) and, if it got anything, one archive of the ids.
    fn read_and_archive(&mut self, read_sql: &str, archive_sql: &str) -> Res<Vec<i64>> {
        let ids: Vec<i64> = self
            .client
            .query(read_sql, &[&QUEUE, &self.qty])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            self.client.execute(archive_sql, &[&QUEUE, &ids])?;
        }
        Ok(ids)
    }
}

/// Calls pgq.ticker() every 10 ms until stopped, as pgqd would (PgQ consumers see nothing
/// without ticks). A no-op for the other systems.
fn spawn_ticker(sys: Sys, dsn: &str, stop: Arc<AtomicBool>) -> Option<thread::JoinHandle<()>> {
    if sys != Sys::Pgq {
        return None;
    }
    let dsn = dsn.to_owned();
    Some(thread::spawn(move || {
        let mut c = connect(&dsn).expect("ticker connection");
        while !stop.load(Ordering::Relaxed) {
            let _ = c.execute("SELECT pgq.ticker()", &[]);
            thread::sleep(Duration::from_millis(10));
        }
    }))
}

fn connect(dsn: &str) -> Res<Client> {
    Ok(Client::connect(dsn, NoTls)?)
}

// ------------------------------------------------------------------------------------------
// Results
// ------------------------------------------------------------------------------------------

#[derive(Serialize, Clone)]
struct Series {
    workload: String,
    variant: String,
    metric: String,
    unit: String,
    higher_is_better: bool,
    system: Sys,
    values: Vec<f64>,
    note: Option<String>,
}

#[derive(Default)]
struct Results {
    series: Vec<Series>,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        w: &str,
        variant: &str,
        metric: &str,
        unit: &str,
        hib: bool,
        sys: Sys,
        v: f64,
        note: Option<&str>,
    ) {
        if let Some(s) = self.series.iter_mut().find(|s| {
            s.workload == w && s.variant == variant && s.metric == metric && s.system == sys
        }) {
            s.values.push(v);
            return;
        }
        self.series.push(Series {
            workload: w.into(),
            variant: variant.into(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better: hib,
            system: sys,
            values: vec![v],
            note: note.map(str::to_owned),
        });
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(s: Option<&Series>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.values.len() == 1 => fmt_num(s.values[0]),
        Some(s) => {
            let lo = s.values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = s.values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{} ({}–{})",
                fmt_num(median(&s.values)),
                fmt_num(lo),
                fmt_num(hi)
            )
        }
    }
}

fn ratio(a: Option<&Series>, b: Option<&Series>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (ma, mb) = (median(&a.values), median(&b.values));
            if mb == 0.0 || ma.is_nan() || mb.is_nan() {
                "n/a".into()
            } else {
                format!("{:.2}x", ma / mb)
            }
        }
        _ => "n/a".into(),
    }
}

fn markdown(results: &Results, header: &str) -> String {
    let mut out = String::new();
    out.push_str(header);
    out.push_str(
        "\n| workload | variant | metric | pgflow | pgmq | PgQ | pgflow/pgmq | pgflow/PgQ |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for s in &results.series {
        let k = (s.workload.clone(), s.variant.clone(), s.metric.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut notes: Vec<String> = Vec::new();
    for (w, v, m) in keys {
        let find = |sys: Sys| {
            results
                .series
                .iter()
                .find(|s| s.workload == w && s.variant == v && s.metric == m && s.system == sys)
        };
        let any = find(Sys::Pgflow)
            .or(find(Sys::Pgmq))
            .or(find(Sys::Pgq))
            .unwrap();
        let arrow = if any.higher_is_better { "↑" } else { "↓" };
        for sys in [Sys::Pgflow, Sys::Pgmq, Sys::Pgq] {
            if let Some(n) = find(sys).and_then(|s| s.note.clone()) {
                let line = format!("{w} {v} {}: {n}", sys.name());
                if !notes.contains(&line) {
                    notes.push(line);
                }
            }
        }
        out.push_str(&format!(
            "| {w} | {v} | {m} ({}) {arrow} | {} | {} | {} | {} | {} |\n",
            any.unit,
            cell(find(Sys::Pgflow)),
            cell(find(Sys::Pgmq)),
            cell(find(Sys::Pgq)),
            ratio(find(Sys::Pgflow), find(Sys::Pgmq)),
            ratio(find(Sys::Pgflow), find(Sys::Pgq)),
        ));
    }
    out.push_str("\nCells: median (min–max) over the repeats. ↑ higher is better, ↓ lower is better; ratios are pgflow's median over the peer's.\n");
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Measuring helpers
// ------------------------------------------------------------------------------------------

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: i32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that closes the command name: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// CPU seconds used by every process of the cluster (postmaster and its children).
fn cluster_cpu_secs(c: &mut Client) -> Res<f64> {
    let data_dir: String = c
        .query_one("SELECT current_setting('data_directory')", &[])?
        .get(0);
    let pid_line = fs::read_to_string(format!("{data_dir}/postmaster.pid"))?;
    let postmaster: i32 = pid_line.lines().next().unwrap_or("0").trim().parse()?;
    let mut total = cpu_secs(postmaster);
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
            let ppid: i32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if ppid == postmaster {
                total += cpu_secs(pid);
            }
        }
    }
    Ok(total)
}

fn wal_lsn(c: &mut Client) -> Res<f64> {
    Ok(
        c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::float8", &[])?
            .get(0),
    )
}

/// Bytes of tables + indexes + TOAST, and dead tuples of the heap tables.
fn size_and_dead(c: &mut Client, rels: &[String]) -> Res<(f64, f64)> {
    // Statistics reach the cumulative stats system up to a second after a transaction ends.
    thread::sleep(Duration::from_millis(1100));
    c.execute("SELECT pg_stat_clear_snapshot()", &[])?;
    let mut bytes = 0.0;
    let mut dead = 0.0;
    for r in rels {
        let row = c.query_one(
            "SELECT pg_total_relation_size($1::text::regclass)::float8,
                    coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::text::regclass), 0)::float8",
            &[r],
        )?;
        bytes += row.get::<_, f64>(0);
        dead += row.get::<_, f64>(1);
    }
    Ok((bytes, dead))
}

/// Systems in a rotating order per repeat, so no system always runs first (on a cold cache)
/// or last (on a warm one).
fn rotation(systems: &[Sys], repeat: usize) -> Vec<Sys> {
    let mut v = systems.to_vec();
    let n = v.len();
    v.rotate_left(repeat % n.max(1));
    v
}

// ------------------------------------------------------------------------------------------
// Workloads
// ------------------------------------------------------------------------------------------

struct Ctx {
    dsn: String,
    pgbench: String,
    plan: Plan,
    systems: Vec<Sys>,
    pg_host: String,
    pg_port: String,
    pg_user: String,
    pg_db: String,
}

impl Ctx {
    fn admin(&self) -> Res<Client> {
        connect(&self.dsn)
    }
}

/// Runs a pgbench script for a fixed time; returns transactions per second.
fn pgbench_tps(ctx: &Ctx, sys: Sys, script: &PathBuf, clients: u32, secs: u32) -> Res<f64> {
    let out = Command::new(&ctx.pgbench)
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(4).to_string(),
        ])
        .args(["-T", &secs.to_string()])
        .args([
            "-h",
            &ctx.pg_host,
            "-p",
            &ctx.pg_port,
            "-U",
            &ctx.pg_user,
            &ctx.pg_db,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed for {}: {}{}",
            sys.name(),
            text,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|x| x.parse().ok())
        .ok_or("no tps line in pgbench output")?)
}

fn clients_variant(clients: u32) -> String {
    format!("{clients} client{}", if clients > 1 { "s" } else { "" })
}

/// W1 and W2: pgbench -M prepared, fixed time, messages per second.
fn w1_w2(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("pgflow-bench-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    for (w, batch) in [("W1 send", 1u32), ("W2 send_batch 100", 100u32)] {
        for &clients in &ctx.plan.w12_clients {
            for rep in 0..ctx.plan.repeats {
                for sys in rotation(&ctx.systems, rep) {
                    let mut admin = ctx.admin()?;
                    sys.recreate(&mut admin, QUEUE)?;
                    sys.reset(&mut admin)?;
                    let script = tmp.join(format!("{}-{batch}.sql", sys.name()));
                    fs::write(&script, sys.pgbench_script(batch))?;
                    let tps = pgbench_tps(ctx, sys, &script, clients, ctx.plan.w12_secs)?;
                    let variant = clients_variant(clients);
                    let rate = tps * batch as f64;
                    res.add(w, &variant, "messages/s", "msg/s", true, sys, rate, None);
                    eprintln!("  {w} {variant} {}: {rate:.0} msg/s", sys.name());
                    sys.drop(&mut admin, QUEUE)?;
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// The proposal_for_consensus contract of examples/evolution/contracts.sql (the file's first
/// `$json$ ... $json$` body), which PAYLOAD satisfies.
fn proposal_contract() -> Res<&'static str> {
    const SQL: &str = include_str!("../../examples/evolution/contracts.sql");
    SQL.split("$json$")
        .nth(1)
        .filter(|s| s.contains("\"proposal_for_consensus\""))
        .ok_or_else(|| "no proposal_for_consensus contract in contracts.sql".into())
}

/// W9: what a message contract costs on send. W1's one-message send, once to a queue without a
/// contract and once to a queue with the seeds' proposal contract (12 properties, nested
/// objects, uuid and date-time formats). pgmq has no contracts; it runs the same script in both
/// rows, so its two figures show the run-to-run noise.
fn w9(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("pgflow-bench-w9-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let contract = proposal_contract()?;
    for &clients in &ctx.plan.w12_clients {
        for rep in 0..ctx.plan.repeats {
            for with_contract in [false, true] {
                for sys in rotation(&ctx.systems, rep + usize::from(with_contract)) {
                    if sys == Sys::Pgq {
                        continue;
                    }
                    let mut admin = ctx.admin()?;
                    sys.recreate(&mut admin, QUEUE)?;
                    sys.reset(&mut admin)?;
                    if with_contract && sys == Sys::Pgflow {
                        admin.execute(
                            "SELECT pgflow.set_contract($1, $2::text::jsonb)",
                            &[&QUEUE, &contract],
                        )?;
                    }
                    let script = tmp.join(format!("{}-1.sql", sys.name()));
                    fs::write(&script, sys.pgbench_script(1))?;
                    let tps = pgbench_tps(ctx, sys, &script, clients, ctx.plan.w12_secs)?;
                    let variant = format!(
                        "{}, {}",
                        clients_variant(clients),
                        if with_contract {
                            "proposal contract"
                        } else {
                            "no contract"
                        }
                    );
                    res.add(
                        "W9 contract",
                        &variant,
                        "messages/s",
                        "msg/s",
                        true,
                        sys,
                        tps,
                        None,
                    );
                    eprintln!("  W9 {variant} {}: {tps:.0} msg/s", sys.name());
                    sys.drop(&mut admin, QUEUE)?;
                }
            }
        }
        // The figure that matters: pgflow with the contract over pgflow without, same run.
        let find = |with: bool| {
            let v = format!(
                "{}, {}",
                clients_variant(clients),
                if with {
                    "proposal contract"
                } else {
                    "no contract"
                }
            );
            res.series.iter().position(|s| {
                s.workload == "W9 contract" && s.variant == v && s.system == Sys::Pgflow
            })
        };
        if let (Some(without), Some(with)) = (find(false), find(true)) {
            let r = median(&res.series[with].values) / median(&res.series[without].values);
            res.series[with].note = Some(format!(
                "validating keeps {r:.2}x of the no-contract send rate ({:.1}% cost)",
                (1.0 - r) * 100.0
            ));
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// W3 (drain a prefilled backlog) and the W6 size figures taken around it.
fn w3(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let n = ctx.plan.w3_backlog;
    for &batch in &ctx.plan.w3_batches {
        for &consumers in &ctx.plan.w3_consumers {
            for rep in 0..ctx.plan.repeats {
                for sys in rotation(&ctx.systems, rep) {
                    if !sys.competing_consumers() && consumers != 1 {
                        continue;
                    }
                    let mut admin = ctx.admin()?;
                    sys.recreate(&mut admin, QUEUE)?;
                    sys.reset(&mut admin)?;
                    let live = sys.live_relations(&mut admin)?;
                    let (empty_bytes, _) = size_and_dead(&mut admin, &live)?;
                    sys.prefill(&mut admin, n, batch)?;
                    let rels = sys.relations(&mut admin)?;
                    for r in &rels {
                        admin.batch_execute(&format!("VACUUM ANALYZE {r}"))?;
                    }
                    admin.batch_execute("CHECKPOINT")?;
                    let variant = format!(
                        "{consumers} consumer{}, {batch}/read",
                        if consumers > 1 { "s" } else { "" }
                    );
                    if consumers == ctx.plan.w3_consumers[0] && batch == ctx.plan.w3_batches[0] {
                        let (bytes, _) = size_and_dead(&mut admin, &live)?;
                        res.add(
                            "W6 size",
                            "live backlog",
                            "bytes/message (heap+indexes+TOAST)",
                            "B",
                            false,
                            sys,
                            (bytes - empty_bytes) / n as f64,
                            None,
                        );
                    }

                    let start = Arc::new(Barrier::new(consumers + 1));
                    let done = Arc::new(AtomicU64::new(0));
                    let handles: Vec<_> = (0..consumers)
                        .map(|_| {
                            let (start, done, dsn) =
                                (Arc::clone(&start), Arc::clone(&done), ctx.dsn.clone());
                            thread::spawn(move || -> Res<()> {
                                let mut c = Consumer::new(sys, &dsn, batch)?;
                                start.wait();
                                loop {
                                    let got = c.round()?.len() as u64;
                                    if got == 0 {
                                        return Ok(());
                                    }
                                    done.fetch_add(got, Ordering::Relaxed);
                                }
                            })
                        })
                        .collect();
                    start.wait();
                    let t0 = Instant::now();
                    for h in handles {
                        h.join().map_err(|_| "consumer panicked")??;
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    let consumed = done.load(Ordering::Relaxed) as i64;
                    if consumed != n {
                        return Err(format!("{}: drained {consumed} of {n}", sys.name()).into());
                    }
                    let note = (!sys.competing_consumers())
                        .then_some("one consumer: PgQ has no competing consumers; batches sized by ticks of this many events");
                    res.add(
                        "W3 drain",
                        &variant,
                        "messages/s",
                        "msg/s",
                        true,
                        sys,
                        n as f64 / secs,
                        note,
                    );
                    eprintln!(
                        "  W3 {variant} {}: {:.0} msg/s",
                        sys.name(),
                        n as f64 / secs
                    );
                    if consumers == *ctx.plan.w3_consumers.last().unwrap()
                        && batch == ctx.plan.w3_batches[0]
                        || (!sys.competing_consumers() && batch == ctx.plan.w3_batches[0])
                    {
                        let (bytes, dead) = size_and_dead(&mut admin, &rels)?;
                        res.add(
                            "W6 size",
                            "after W3 drain",
                            "dead tuples",
                            "rows",
                            false,
                            sys,
                            dead,
                            None,
                        );
                        res.add(
                            "W6 size",
                            "after W3 drain",
                            "bytes on disk",
                            "MB",
                            false,
                            sys,
                            bytes / 1e6,
                            None,
                        );
                    }
                    sys.drop(&mut admin, QUEUE)?;
                }
            }
        }
    }
    Ok(())
}

/// Steady state: producers send one message per transaction, consumers read 10 and archive.
/// Returns per-second consumed counts, totals, and the depth samples.
struct Steady {
    sent: u64,
    consumed: u64,
    secs: f64,
    per_second: Vec<u64>,
    depth: Vec<i64>,
}

fn steady(
    ctx: &Ctx,
    sys: Sys,
    producers: usize,
    consumers: usize,
    secs: u64,
    during: &mut dyn FnMut(u64),
) -> Res<Steady> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let ticker = spawn_ticker(sys, &ctx.dsn, Arc::clone(&stop));
    let mut handles: Vec<thread::JoinHandle<Res<()>>> = Vec::new();
    for _ in 0..producers {
        let (stop, sent, dsn) = (Arc::clone(&stop), Arc::clone(&sent), ctx.dsn.clone());
        handles.push(thread::spawn(move || {
            let mut c = connect(&dsn)?;
            let st = c.prepare(sys.send_sql())?;
            while !stop.load(Ordering::Relaxed) {
                c.execute(&st, &[&QUEUE, &PAYLOAD])?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for _ in 0..consumers {
        let (stop, consumed, dsn) = (Arc::clone(&stop), Arc::clone(&consumed), ctx.dsn.clone());
        handles.push(thread::spawn(move || {
            let mut c = Consumer::new(sys, &dsn, 10)?;
            while !stop.load(Ordering::Relaxed) {
                let got = c.round()?.len() as u64;
                consumed.fetch_add(got, Ordering::Relaxed);
                if got == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(())
        }));
    }
    let t0 = Instant::now();
    let mut per_second = Vec::new();
    let mut depth = Vec::new();
    let mut last = 0;
    for s in 1..=secs {
        let target = t0 + Duration::from_secs(s);
        thread::sleep(target.saturating_duration_since(Instant::now()));
        let c = consumed.load(Ordering::Relaxed);
        per_second.push(c - last);
        last = c;
        depth.push(sent.load(Ordering::Relaxed) as i64 - c as i64);
        during(s);
    }
    stop.store(true, Ordering::Relaxed);
    let secs_run = t0.elapsed().as_secs_f64();
    for h in handles {
        h.join().map_err(|_| "worker panicked")??;
    }
    if let Some(t) = ticker {
        let _ = t.join();
    }
    Ok(Steady {
        sent: sent.load(Ordering::Relaxed),
        consumed: consumed.load(Ordering::Relaxed),
        secs: secs_run,
        per_second,
        depth,
    })
}

fn w4(ctx: &Ctx, res: &mut Results) -> Res<()> {
    for &consumers in &ctx.plan.w4_consumers {
        for rep in 0..ctx.plan.repeats {
            for sys in rotation(&ctx.systems, rep) {
                let k = if sys.competing_consumers() {
                    consumers
                } else {
                    1
                };
                if !sys.competing_consumers() && consumers != ctx.plan.w4_consumers[0] {
                    continue;
                }
                let mut admin = ctx.admin()?;
                sys.recreate(&mut admin, QUEUE)?;
                sys.reset(&mut admin)?;
                let r = steady(ctx, sys, 4, k, ctx.plan.w4_secs, &mut |_| {})?;
                let variant = format!("4 producers, {consumers} consumers");
                let note = (!sys.competing_consumers())
                    .then_some("one consumer (no competing consumers in PgQ); ticks every 10 ms");
                res.add(
                    "W4 steady",
                    &variant,
                    "send rate",
                    "msg/s",
                    true,
                    sys,
                    r.sent as f64 / r.secs,
                    note,
                );
                res.add(
                    "W4 steady",
                    &variant,
                    "consume rate",
                    "msg/s",
                    true,
                    sys,
                    r.consumed as f64 / r.secs,
                    note,
                );
                res.add(
                    "W4 steady",
                    &variant,
                    "final depth",
                    "msgs",
                    false,
                    sys,
                    *r.depth.last().unwrap_or(&0) as f64,
                    note,
                );
                eprintln!(
                    "  W4 {variant} {}: send {:.0}/s consume {:.0}/s depth {:?}",
                    sys.name(),
                    r.sent as f64 / r.secs,
                    r.consumed as f64 / r.secs,
                    r.depth
                );
                if consumers == ctx.plan.w4_consumers[0] {
                    let rels = sys.relations(&mut admin)?;
                    let (_, dead) = size_and_dead(&mut admin, &rels)?;
                    res.add(
                        "W6 size",
                        "after W4",
                        "dead tuples",
                        "rows",
                        false,
                        sys,
                        dead,
                        None,
                    );
                }
                sys.drop(&mut admin, QUEUE)?;
            }
        }
    }
    Ok(())
}

/// W5: latency at a fixed send rate, from send commit to a consumer holding the message; then
/// the CPU the waiting consumer burns on an empty queue.
fn w5(ctx: &Ctx, res: &mut Results) -> Res<()> {
    for rep in 0..ctx.plan.repeats {
        for sys in rotation(&ctx.systems, rep) {
            let mut admin = ctx.admin()?;
            sys.recreate(&mut admin, QUEUE)?;
            let stop = Arc::new(AtomicBool::new(false));
            let ticker = spawn_ticker(sys, &ctx.dsn, Arc::clone(&stop));
            let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
            let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
            let consumer_stop = Arc::new(AtomicBool::new(false));
            let pid = Arc::new(AtomicU64::new(0));
            let cons = {
                let (stop, received, dsn, pid) = (
                    Arc::clone(&consumer_stop),
                    Arc::clone(&received),
                    ctx.dsn.clone(),
                    Arc::clone(&pid),
                );
                thread::spawn(move || -> Res<()> {
                    let mut c = Consumer::new(sys, &dsn, 10)?;
                    pid.store(c.backend_pid()? as u64, Ordering::Relaxed);
                    while !stop.load(Ordering::Relaxed) {
                        let ids = c.wait_round(&stop)?;
                        let now = Instant::now();
                        received
                            .lock()
                            .unwrap()
                            .extend(ids.into_iter().map(|i| (i, now)));
                    }
                    Ok(())
                })
            };
            // Let the consumer settle into waiting before the first send.
            thread::sleep(Duration::from_millis(200));
            let mut p = connect(&ctx.dsn)?;
            let st = p.prepare(sys.send_sql())?;
            let total = ctx.plan.w5_secs * ctx.plan.w5_rate;
            let t0 = Instant::now();
            for i in 0..total {
                let target = t0 + Duration::from_micros(i * 1_000_000 / ctx.plan.w5_rate);
                thread::sleep(target.saturating_duration_since(Instant::now()));
                let id: i64 = p.query_one(&st, &[&QUEUE, &PAYLOAD])?.get(0);
                committed.lock().unwrap().insert(id, Instant::now());
            }
            // Wait until every message has arrived (bounded), then measure idle CPU.
            let deadline = Instant::now() + Duration::from_secs(30);
            while received.lock().unwrap().len() < total as usize && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let backend = pid.load(Ordering::Relaxed) as i32;
            let cpu0 = cpu_secs(backend);
            let ti = Instant::now();
            thread::sleep(Duration::from_secs(ctx.plan.w5_idle_secs));
            let idle_cpu = (cpu_secs(backend) - cpu0) / ti.elapsed().as_secs_f64() * 100.0;
            consumer_stop.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            cons.join().map_err(|_| "consumer panicked")??;
            if let Some(t) = ticker {
                let _ = t.join();
            }
            let committed = committed.lock().unwrap();
            let mut lat: Vec<f64> = received
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(id, at)| {
                    committed
                        .get(id)
                        .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1000.0)
                })
                .collect();
            if lat.len() < total as usize {
                return Err(format!("{}: W5 received {} of {total}", sys.name(), lat.len()).into());
            }
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
            let note = match sys {
                Sys::Pgflow => {
                    Some("read(wait => 1 s): sleeps on its latch, woken by the send's commit")
                }
                Sys::Pgmq => Some("read_with_poll, polling every 10 ms"),
                Sys::Pgq => Some("ticker every 10 ms, next_batch polled every 10 ms"),
            };
            let variant = format!("{} msg/s", ctx.plan.w5_rate);
            res.add(
                "W5 latency",
                &variant,
                "p50",
                "ms",
                false,
                sys,
                pct(0.5),
                note,
            );
            res.add(
                "W5 latency",
                &variant,
                "p90",
                "ms",
                false,
                sys,
                pct(0.9),
                note,
            );
            res.add(
                "W5 latency",
                &variant,
                "p99",
                "ms",
                false,
                sys,
                pct(0.99),
                note,
            );
            res.add(
                "W5 latency",
                &variant,
                "max",
                "ms",
                false,
                sys,
                pct(1.0),
                note,
            );
            res.add(
                "W5 latency",
                "idle queue",
                "consumer CPU",
                "% of a core",
                false,
                sys,
                idle_cpu,
                note,
            );
            eprintln!(
                "  W5 {}: p50 {:.2} p99 {:.2} max {:.2} ms, idle CPU {:.1}%",
                sys.name(),
                pct(0.5),
                pct(0.99),
                pct(1.0),
                idle_cpu
            );
            sys.drop(&mut admin, QUEUE)?;
        }
    }
    Ok(())
}

/// W7: the steady state of W4 while another session holds a REPEATABLE READ snapshot.
fn w7(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let (b, h, a) = (ctx.plan.w7_before, ctx.plan.w7_hold, ctx.plan.w7_after);
    for sys in ctx.systems.clone() {
        let mut admin = ctx.admin()?;
        sys.recreate(&mut admin, QUEUE)?;
        sys.reset(&mut admin)?;
        let mut holder = connect(&ctx.dsn)?;
        let mut dead_at_release = 0.0;
        let rels = sys.relations(&mut admin)?;
        let k = if sys.competing_consumers() { 2 } else { 1 };
        let r = steady(ctx, sys, 4, k, b + h + a, &mut |s| {
            if s == b {
                holder
                    .batch_execute(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;",
                    )
                    .expect("take snapshot");
            }
            if s == b + h {
                let mut c = connect(&ctx.dsn).expect("stats connection");
                dead_at_release = size_and_dead(&mut c, &rels)
                    .map(|x| x.1)
                    .unwrap_or(f64::NAN);
                holder.batch_execute("COMMIT").expect("release snapshot");
            }
        })?;
        let ps: Vec<f64> = r.per_second.iter().map(|&x| x as f64).collect();
        let before = median(&ps[..b as usize]);
        let during = median(&ps[b as usize..(b + h) as usize]);
        let last_quarter = &ps[(b + h - (h / 4).max(1)) as usize..(b + h) as usize];
        let end_of_hold = median(last_quarter);
        let recovery = ps[(b + h) as usize..]
            .iter()
            .position(|&x| x >= 0.9 * before)
            .map(|i| i as f64 + 1.0)
            .unwrap_or(f64::NAN);
        let variant = format!("{h} s snapshot");
        let note = (!sys.competing_consumers()).then_some("one consumer");
        res.add(
            "W7 held snapshot",
            &variant,
            "consume before",
            "msg/s",
            true,
            sys,
            before,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "during/before",
            "%",
            true,
            sys,
            during / before * 100.0,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "last quarter of hold/before",
            "%",
            true,
            sys,
            end_of_hold / before * 100.0,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "dead tuples at release",
            "rows",
            false,
            sys,
            dead_at_release,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "seconds to 90% after release",
            "s",
            false,
            sys,
            recovery,
            note,
        );
        eprintln!(
            "  W7 {}: before {before:.0}/s during {during:.0}/s end-of-hold {end_of_hold:.0}/s dead {dead_at_release:.0} recovery {recovery}s",
            sys.name()
        );
        sys.drop(&mut admin, QUEUE)?;
    }
    Ok(())
}

/// W8: idle cost of many empty queues: CPU of the whole cluster and WAL written.
fn w8(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let n = ctx.plan.w8_queues;
    for sys in ctx.systems.clone() {
        let mut admin = ctx.admin()?;
        // Start from clean tables: otherwise autovacuum cleaning up after the previous workload
        // (pgflow's tables are shared and outlive its queues) shows up as idle WAL.
        sys.recreate(&mut admin, QUEUE)?;
        sys.reset(&mut admin)?;
        sys.drop(&mut admin, QUEUE)?;
        for i in 0..n {
            let q = format!("idle_{i}");
            sys.recreate(&mut admin, &q)?;
            if sys == Sys::Pgq {
                // PgQ's defaults (a tick at most every 3 s, an idle tick every minute), not the
                // 10 ms lag the latency workloads use.
                admin.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '3 seconds')",
                    &[&q],
                )?;
                admin.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_count', '500')",
                    &[&q],
                )?;
            }
        }
        // Leave autovacuum nothing to do after creating the queues (it would otherwise show
        // up as idle WAL, as in the first full run), then start from a checkpoint.
        admin.batch_execute("VACUUM ANALYZE")?;
        admin.batch_execute("CHECKPOINT")?;
        // What each system needs running while idle: PgQ its ticker (pgqd's job); pgmq
        // nothing; pgflow its background worker, which runs inside the server by itself.
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = (sys == Sys::Pgq).then(|| {
            let (stop, dsn) = (Arc::clone(&stop), ctx.dsn.clone());
            thread::spawn(move || {
                let mut c = connect(&dsn).expect("ticker");
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.execute("SELECT pgq.ticker()", &[]);
                    thread::sleep(Duration::from_secs(1)); // pgqd's default ticker period
                }
            })
        });
        let cpu0 = cluster_cpu_secs(&mut admin)?;
        let wal0 = wal_lsn(&mut admin)?;
        let t0 = Instant::now();
        thread::sleep(Duration::from_secs(ctx.plan.w8_secs));
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cluster_cpu_secs(&mut admin)? - cpu0) / secs * 100.0;
        let wal = (wal_lsn(&mut admin)? - wal0) / secs;
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = ticker {
            let _ = t.join();
        }
        let variant = format!("{n} empty queues");
        let note = match sys {
            Sys::Pgflow => Some("the background worker runs maintain() every second (pgflow.tick)"),
            Sys::Pgq => Some("default queue settings, pgq.ticker() every second as pgqd does"),
            Sys::Pgmq => None,
        };
        res.add(
            "W8 idle",
            &variant,
            "cluster CPU",
            "% of a core",
            false,
            sys,
            cpu,
            note,
        );
        res.add("W8 idle", &variant, "WAL", "bytes/s", false, sys, wal, note);
        eprintln!("  W8 {}: CPU {cpu:.2}% WAL {wal:.0} B/s", sys.name());
        for i in 0..n {
            sys.drop(&mut admin, &format!("idle_{i}"))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Main
// ------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Report<'a> {
    date: String,
    mode: Mode,
    label: String,
    server_version: String,
    settings: HashMap<String, String>,
    machine: HashMap<String, String>,
    systems: Vec<Sys>,
    failures: Vec<String>,
    series: &'a [Series],
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn machine() -> HashMap<String, String> {
    let mut m = HashMap::new();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    m.insert(
        "cores".into(),
        thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1048576.0))
        .unwrap_or_default();
    m.insert("memory".into(), mem);
    m
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let dsn = arg(&args, "--dsn").ok_or("--dsn is required")?;
    let mode = match arg(&args, "--mode").as_deref().unwrap_or("quick") {
        "smoke" => Mode::Smoke,
        "quick" => Mode::Quick,
        "full" => Mode::Full,
        m => return Err(format!("unknown mode {m}").into()),
    };
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "bench/results".into()));
    let pgbench = arg(&args, "--pgbench").unwrap_or_else(|| "pgbench".into());
    let label = arg(&args, "--label").unwrap_or_default();
    let systems: Vec<Sys> = arg(&args, "--systems")
        .unwrap_or_else(|| "pgflow,pgmq,pgq".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "pgflow" => Ok(Sys::Pgflow),
            "pgmq" => Ok(Sys::Pgmq),
            "pgq" => Ok(Sys::Pgq),
            o => Err(format!("unknown system {o}")),
        })
        .collect::<Result<_, _>>()?;
    let workloads =
        arg(&args, "--workloads").unwrap_or_else(|| "W1,W2,W3,W4,W5,W6,W7,W8,W9".into());

    // Connection parameters for pgbench, from the key=value DSN.
    let kv: HashMap<&str, &str> = dsn
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    let ctx = Ctx {
        dsn: dsn.clone(),
        pgbench,
        plan: Plan::for_mode(mode),
        systems: systems.clone(),
        pg_host: kv.get("host").unwrap_or(&"127.0.0.1").to_string(),
        pg_port: kv.get("port").unwrap_or(&"5432").to_string(),
        pg_user: kv.get("user").unwrap_or(&"postgres").to_string(),
        pg_db: kv.get("dbname").unwrap_or(&"postgres").to_string(),
    };

    let mut admin = ctx.admin()?;
    let server_version: String = admin.query_one("SELECT version()", &[])?.get(0);
    let mut settings = HashMap::new();
    for s in [
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
        "autovacuum",
    ] {
        let v: String = admin.query_one("SELECT current_setting($1)", &[&s])?.get(0);
        settings.insert(s.to_owned(), v);
    }
    drop(admin);

    let mut res = Results::default();
    let started = chrono::Utc::now();
    let m = machine();
    let header = format!(
        "### Benchmark: {} mode, {}\n\n{}; {} cores ({}), {}; synchronous_commit={}, fsync={}, shared_buffers={}. \
         pgflow {} (release build), pgmq 1.13 (SQL from the PyPI package pgmq 1.1.4), PgQ 3.5 (Debian).{}\n",
        format!("{mode:?}").to_lowercase(),
        started.format("%Y-%m-%d"),
        server_version.split(" on ").next().unwrap_or(&server_version),
        m.get("cores").cloned().unwrap_or_default(),
        m.get("cpu").cloned().unwrap_or_default(),
        m.get("memory").cloned().unwrap_or_default(),
        settings["synchronous_commit"],
        settings["fsync"],
        settings["shared_buffers"],
        env!("CARGO_PKG_VERSION"),
        if label.is_empty() { String::new() } else { format!(" {label}") },
    );
    fs::create_dir_all(&out)?;
    let stamp = started.format("%Y%m%dT%H%M%SZ");
    let major: String = server_version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .unwrap_or("x")
        .to_owned();
    let base = out.join(format!(
        "{stamp}-{}-pg{major}",
        format!("{mode:?}").to_lowercase()
    ));
    // Results are written after every workload, so a failure late in a long run keeps the rest.
    let save = |res: &Results, failures: &[String]| -> Res<String> {
        let mut md = markdown(res, &header);
        if !failures.is_empty() {
            md.push_str("\nFailed workloads (no figures above):\n");
            for f in failures {
                md.push_str(&format!("- {f}\n"));
            }
        }
        let report = Report {
            date: started.to_rfc3339(),
            mode,
            label: label.clone(),
            server_version: server_version.clone(),
            settings: settings.clone(),
            machine: m.clone(),
            systems: systems.clone(),
            failures: failures.to_vec(),
            series: &res.series,
        };
        fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        fs::write(base.with_extension("md"), &md)?;
        Ok(md)
    };

    type Workload = fn(&Ctx, &mut Results) -> Res<()>;
    let all: [(&str, &[&str], Workload); 7] = [
        (
            "W1/W2: send throughput (pgbench -M prepared)",
            &["W1", "W2"],
            w1_w2,
        ),
        ("W3/W6: drain a backlog", &["W3", "W6"], w3),
        ("W4: steady state", &["W4"], w4),
        ("W5: latency at a fixed rate", &["W5"], w5),
        ("W7: held snapshot", &["W7"], w7),
        ("W8: idle cost", &["W8"], w8),
        ("W9: contract validation cost", &["W9"], w9),
    ];
    let mut failures = Vec::new();
    for (title, names, f) in all {
        if !names.iter().any(|n| workloads.split(',').any(|x| x == *n)) {
            continue;
        }
        eprintln!("{title}");
        if let Err(e) = f(&ctx, &mut res) {
            eprintln!("  FAILED: {e}");
            failures.push(format!("{title}: {e}"));
        }
        save(&res, &failures)?;
    }
    let md = save(&res, &failures)?;
    println!("{md}");
    eprintln!("results: {}.{{json,md}}", base.display());
    if !failures.is_empty() {
        return Err(format!("{} workload(s) failed", failures.len()).into());
    }
    Ok(())
}
