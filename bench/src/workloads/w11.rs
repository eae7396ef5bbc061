//! W11: what pgflow's statistics in shared memory (`pgflow.stats`) cost. W1's one-message send
//! and W3's drain (1 consumer, 10 per read), each with the statistics on and off, alternating
//! which goes first per repeat. pgmq runs the same in both rows, so its two figures show the
//! run-to-run noise.
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{clients_variant, pgbench_tps, Ctx};
use crate::probes::rotation;
use crate::report::{median, Results};
use crate::systems::{connect, Consumer, Sys};
use crate::{Res, QUEUE};

const W: &str = "W11 statistics";

/// Sets `pgflow.stats` cluster-wide and waits until a new session sees it.
fn set_stats(ctx: &Ctx, on: bool) -> Res<()> {
    let mut admin = ctx.admin()?;
    admin.batch_execute(if on {
        "ALTER SYSTEM RESET pgflow.stats"
    } else {
        "ALTER SYSTEM SET pgflow.stats = off"
    })?;
    admin.batch_execute("SELECT pg_reload_conf()")?;
    let want = if on { "on" } else { "off" };
    let t0 = Instant::now();
    loop {
        let mut c = connect(&ctx.dsn)?;
        let v: String = c.query_one("SHOW pgflow.stats", &[])?.get(0);
        if v == want {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("pgflow.stats never became {want}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(ctx: &Ctx, sys: Sys, n: i64) -> Res<f64> {
    let mut admin = ctx.admin()?;
    sys.recreate(&mut admin, QUEUE)?;
    sys.reset(&mut admin, ctx.clean_tables)?;
    sys.prefill(&mut admin, n, 10)?;
    for r in sys.relations(&mut admin)? {
        admin.batch_execute(&format!("ANALYZE {r}"))?;
    }
    admin.batch_execute("CHECKPOINT")?;
    let done = Arc::new(AtomicU64::new(0));
    let mut c = Consumer::new(sys, &ctx.dsn, 10)?;
    let t0 = Instant::now();
    loop {
        let got = c.round()?.len() as u64;
        if got == 0 {
            break;
        }
        done.fetch_add(got, Ordering::Relaxed);
    }
    let secs = t0.elapsed().as_secs_f64();
    let consumed = done.load(Ordering::Relaxed) as i64;
    if consumed != n {
        return Err(format!("{}: drained {consumed} of {n}", sys.name()).into());
    }
    sys.drop(&mut admin, QUEUE)?;
    Ok(n as f64 / secs)
}

pub(crate) fn w11(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("pgflow-bench-w11-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let clients = ctx.plan.w12_clients[0];
    let send_variant = |on: bool| {
        format!(
            "send, {}, stats {}",
            clients_variant(clients),
            if on { "on" } else { "off" }
        )
    };
    let drain_variant = |on: bool| {
        format!(
            "drain, 1 consumer, 10/read, stats {}",
            if on { "on" } else { "off" }
        )
    };
    let result = (|| -> Res<()> {
        for rep in 0..ctx.plan.repeats {
            let order = if rep % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for on in order {
                set_stats(ctx, on)?;
                for sys in rotation(&ctx.systems, rep) {
                    if sys == Sys::Pgq {
                        continue;
                    }
                    let mut admin = ctx.admin()?;
                    sys.recreate(&mut admin, QUEUE)?;
                    sys.reset(&mut admin, ctx.clean_tables)?;
                    let script = tmp.join(format!("{}-1.sql", sys.name()));
                    fs::write(&script, sys.pgbench_script(1))?;
                    let tps = pgbench_tps(ctx, sys, &script, clients, ctx.plan.w12_secs)?;
                    sys.drop(&mut admin, QUEUE)?;
                    res.add(
                        W,
                        &send_variant(on),
                        "messages/s",
                        "msg/s",
                        true,
                        sys,
                        tps,
                        None,
                    );
                    eprintln!("  {W} {} {}: {tps:.0} msg/s", send_variant(on), sys.name());
                    let rate = drain(ctx, sys, ctx.plan.w3_backlog)?;
                    res.add(
                        W,
                        &drain_variant(on),
                        "messages/s",
                        "msg/s",
                        true,
                        sys,
                        rate,
                        None,
                    );
                    eprintln!(
                        "  {W} {} {}: {rate:.0} msg/s",
                        drain_variant(on),
                        sys.name()
                    );
                }
            }
        }
        Ok(())
    })();
    // Back to the default whatever happened.
    set_stats(ctx, true)?;
    let _ = fs::remove_dir_all(&tmp);
    result?;
    // The figures that matter: pgflow with the statistics over pgflow without, same run.
    for (on_v, off_v) in [
        (send_variant(true), send_variant(false)),
        (drain_variant(true), drain_variant(false)),
    ] {
        let find = |v: &str| {
            res.series
                .iter()
                .position(|s| s.workload == W && s.variant == v && s.system == Sys::Pgflow)
        };
        if let (Some(on), Some(off)) = (find(&on_v), find(&off_v)) {
            let r = median(&res.series[on].values) / median(&res.series[off].values);
            res.series[on].note = Some(format!(
                "with the statistics pgflow keeps {r:.3}x of its rate without them ({:.1}% cost)",
                (1.0 - r) * 100.0
            ));
        }
    }
    Ok(())
}
