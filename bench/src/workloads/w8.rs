use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::probes::{cluster_cpu_secs, wal_lsn};
use crate::report::Results;
use crate::systems::{connect, Sys};
use crate::{Res, QUEUE};

/// W8: idle cost of many empty queues: CPU of the whole cluster and WAL written.
pub(crate) fn w8(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let n = ctx.plan.w8_queues;
    for sys in ctx.systems.clone() {
        let mut admin = ctx.admin()?;
        // W8 measures idleness, so unlike the other workloads it always starts clean: its own
        // VACUUM below removes what the previous workloads left (pgflow's tables are shared and
        // outlive its queues), which autovacuum would otherwise do during the measurement and
        // show as idle WAL.
        sys.recreate(&mut admin, QUEUE)?;
        sys.reset(&mut admin, ctx.clean_tables)?;
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
