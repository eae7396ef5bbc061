//! Workloads.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::plan::Plan;
use crate::systems::{connect, spawn_ticker, Consumer, Sys};
use crate::{Res, PAYLOAD, QUEUE};

mod w10;
mod w11;
mod w1_w2;
mod w3;
mod w4;
mod w5;
mod w7;
mod w8;

pub(crate) use w10::w10;
pub(crate) use w11::w11;
pub(crate) use w1_w2::{w1_w2, w9};
pub(crate) use w3::w3;
pub(crate) use w4::w4;
pub(crate) use w5::w5;
pub(crate) use w7::w7;
pub(crate) use w8::w8;

pub(crate) struct Ctx {
    pub(crate) dsn: String,
    pub(crate) pgbench: String,
    pub(crate) plan: Plan,
    pub(crate) systems: Vec<Sys>,
    pub(crate) pg_host: String,
    pub(crate) pg_port: String,
    pub(crate) pg_user: String,
    pub(crate) pg_db: String,
    /// VACUUM FULL before every measured run (`--tables clean`) instead of living with the
    /// previous run's garbage (`--tables aged`, the default).
    pub(crate) clean_tables: bool,
    /// Results go to `out_base` plus an extension (.md, .json, .w10.csv, .w10.png).
    pub(crate) out_base: PathBuf,
    /// The Python with matplotlib (scripts/setup.sh plot) and the bench's directory.
    pub(crate) python: String,
    pub(crate) bench_dir: PathBuf,
    pub(crate) mode_name: String,
}

impl Ctx {
    pub(crate) fn admin(&self) -> Res<Client> {
        connect(&self.dsn)
    }
}

/// Runs a pgbench script for a fixed time; returns transactions per second.
pub(crate) fn pgbench_tps(
    ctx: &Ctx,
    sys: Sys,
    script: &PathBuf,
    clients: u32,
    secs: u32,
) -> Res<f64> {
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

pub(crate) fn clients_variant(clients: u32) -> String {
    format!("{clients} client{}", if clients > 1 { "s" } else { "" })
}

/// Steady state: producers send one message per transaction, consumers read 10 and archive.
/// Returns per-second consumed counts, totals, and the depth samples.
pub(crate) struct Steady {
    pub(crate) sent: u64,
    pub(crate) consumed: u64,
    pub(crate) secs: f64,
    pub(crate) per_second: Vec<u64>,
    pub(crate) depth: Vec<i64>,
}

pub(crate) fn steady(
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
            c.finish()
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
