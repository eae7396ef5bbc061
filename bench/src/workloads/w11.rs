//! W11: what pgflow's statistics in shared memory cost. W1's one-message send (1 client) and
//! W3's drain (1 consumer, 10 per read), in pairs: once with `pgflow.stats` on (the default),
//! once with it off, as a user can set it. Which half goes first alternates per pair. Off, the
//! row trigger on `pgflow.message` still fires, because it also checks the rows' invariants
//! (docs/design.md); it returns before it notes anything.
//!
//! On two cores, the wait for each commit's WAL flush varies by ±15% from one run to the next,
//! far more than the cost being measured, and it is the same with the statistics on or off. So
//! W11's sessions commit with `synchronous_commit = off` (set on the database for the workload
//! and reset after it): the rates are then bound by CPU, where the statistics' cost is, and a
//! ratio measured there is an upper bound of the ratio with a flush per commit (W1, W3).
//! Per pair W11 reports the on/off rate ratio (the table shows the median pair's, with the
//! smallest and largest) and the whole cluster's CPU per message (every Postgres process,
//! exited backends included, from /proc). pgmq and PgQ do not run here: the comparison is
//! pgflow with itself, in the same run.
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use super::{clients_variant, pgbench_tps, Ctx};
use crate::probes::cluster_cpu_secs;
use crate::report::{median, Results};
use crate::systems::{connect, Consumer, Sys};
use crate::{Res, QUEUE};

const W: &str = "W11 statistics";
/// Turns the statistics on or off and waits until the trigger sees it.
fn set_stats(ctx: &Ctx, on: bool) -> Res<()> {
    let mut admin = ctx.admin()?;
    admin.batch_execute(if on {
        "ALTER SYSTEM RESET pgflow.stats"
    } else {
        "ALTER SYSTEM SET pgflow.stats = off"
    })?;
    admin.batch_execute("SELECT pg_reload_conf()")?;
    // A new session sees the setting at once; the flag in shared memory that the trigger
    // reads follows when the launcher has reloaded. A queue created before that would start
    // with an invalid entry and be rebuilt (its tables counted) in the middle of the half.
    let want = if on { "on" } else { "off" };
    let t0 = Instant::now();
    loop {
        let mut c = connect(&ctx.dsn)?;
        let v: String = c.query_one("SHOW pgflow.stats", &[])?.get(0);
        let flag: bool = c.query_one("SELECT pgflow._stats_enabled()", &[])?.get(0);
        if v == want && flag == on {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("pgflow.stats never became {want}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One measured half: (messages per second, cluster CPU microseconds per message).
struct Half {
    rate: f64,
    cpu_us: f64,
}

fn send(ctx: &Ctx, clients: u32) -> Res<Half> {
    let sys = Sys::Pgflow;
    let mut admin = ctx.admin()?;
    sys.recreate(&mut admin, QUEUE)?;
    sys.reset(&mut admin, ctx.clean_tables)?;
    let script = std::env::temp_dir().join(format!("pgflow-bench-w11-{}.sql", std::process::id()));
    fs::write(&script, sys.pgbench_script(1))?;
    let cpu0 = cluster_cpu_secs(&mut admin)?;
    let tps = pgbench_tps(ctx, sys, &script, clients, ctx.plan.w11_secs);
    // pgbench's backends exit after it returns: count their CPU once they are gone.
    let t0 = Instant::now();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )?
        .get::<_, i64>(0)
        > 0
        && t0.elapsed() < Duration::from_secs(10)
    {
        thread::sleep(Duration::from_millis(20));
    }
    // The postmaster reaps an exited backend (and adds its CPU to its own account) at once.
    thread::sleep(Duration::from_millis(200));
    let cpu = cluster_cpu_secs(&mut admin)? - cpu0;
    let _ = fs::remove_file(&script);
    let tps = tps?;
    let sent = tps * f64::from(ctx.plan.w11_secs);
    sys.drop(&mut admin, QUEUE)?;
    Ok(Half {
        rate: tps,
        cpu_us: cpu / sent * 1e6,
    })
}

fn drain(ctx: &Ctx, n: i64) -> Res<Half> {
    let sys = Sys::Pgflow;
    let mut admin = ctx.admin()?;
    sys.recreate(&mut admin, QUEUE)?;
    sys.reset(&mut admin, ctx.clean_tables)?;
    sys.prefill(&mut admin, n, 10)?;
    for r in sys.relations(&mut admin)? {
        admin.batch_execute(&format!("ANALYZE {r}"))?;
    }
    admin.batch_execute("CHECKPOINT")?;
    let mut c = Consumer::new(sys, &ctx.dsn, 10)?;
    let cpu0 = cluster_cpu_secs(&mut admin)?;
    let t0 = Instant::now();
    let mut consumed = 0i64;
    loop {
        let got = c.round()?.len() as i64;
        if got == 0 {
            break;
        }
        consumed += got;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cluster_cpu_secs(&mut admin)? - cpu0;
    if consumed != n {
        return Err(format!("pgflow: drained {consumed} of {n}").into());
    }
    drop(c);
    sys.drop(&mut admin, QUEUE)?;
    Ok(Half {
        rate: n as f64 / secs,
        cpu_us: cpu / n as f64 * 1e6,
    })
}

/// The 95% bootstrap interval of the median of `v` (2,000 resamples with a fixed seed, so a
/// result file can be recomputed): how far this machine's noise lets the median be trusted.
fn median_interval(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    };
    let mut medians: Vec<f64> = (0..2000)
        .map(|_| median(&(0..v.len()).map(|_| v[next(v.len())]).collect::<Vec<_>>()))
        .collect();
    medians.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (medians[50], medians[1949])
}

pub(crate) fn w11(ctx: &Ctx, res: &mut Results) -> Res<()> {
    if !ctx.systems.contains(&Sys::Pgflow) {
        return Ok(());
    }
    let clients = ctx.plan.w12_clients[0];
    let names = [
        format!("send, {}", clients_variant(clients)),
        "drain, 1 consumer, 10/read".to_string(),
    ];
    // Per workload: the pairs' (on, off) halves.
    let mut pairs: [Vec<(Half, Half)>; 2] = [Vec::new(), Vec::new()];
    let db = ctx.pg_db.replace('"', "\"\"");
    ctx.admin()?.batch_execute(&format!(
        "ALTER DATABASE \"{db}\" SET synchronous_commit = off"
    ))?;
    let result = (|| -> Res<()> {
        for pair in 0..ctx.plan.w11_pairs {
            let order = if pair % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let mut got: [[Option<Half>; 2]; 2] = Default::default();
            for on in order {
                set_stats(ctx, on)?;
                let s = send(ctx, clients)?;
                let d = drain(ctx, ctx.plan.w11_backlog)?;
                eprintln!(
                    "  {W} pair {pair} stats {}: send {:.0} msg/s ({:.0} us CPU/msg), drain {:.0} msg/s ({:.0} us CPU/msg)",
                    if on { "on" } else { "off" },
                    s.rate,
                    s.cpu_us,
                    d.rate,
                    d.cpu_us
                );
                let i = usize::from(!on);
                got[0][i] = Some(s);
                got[1][i] = Some(d);
            }
            for (w, [on, off]) in got.into_iter().enumerate() {
                if let (Some(on), Some(off)) = (on, off) {
                    pairs[w].push((on, off));
                }
            }
        }
        Ok(())
    })();
    // Back to the defaults whatever happened.
    set_stats(ctx, true)?;
    ctx.admin()?
        .batch_execute(&format!("ALTER DATABASE \"{db}\" RESET synchronous_commit"))?;
    result?;
    for (name, pairs) in names.iter().zip(&pairs) {
        for (on, off) in pairs {
            let mut add = |variant: String, metric: &str, unit: &str, hib: bool, v: f64| {
                res.add(W, &variant, metric, unit, hib, Sys::Pgflow, v, None)
            };
            add(
                format!("{name}, stats on"),
                "messages/s",
                "msg/s",
                true,
                on.rate,
            );
            add(
                format!("{name}, stats off"),
                "messages/s",
                "msg/s",
                true,
                off.rate,
            );
            add(
                format!("{name}, on/off per pair"),
                "rate ratio",
                "x",
                true,
                on.rate / off.rate,
            );
            add(
                format!("{name}, stats on"),
                "cluster CPU per message",
                "us",
                false,
                on.cpu_us,
            );
            add(
                format!("{name}, stats off"),
                "cluster CPU per message",
                "us",
                false,
                off.cpu_us,
            );
        }
        let ratios: Vec<f64> = pairs.iter().map(|(on, off)| on.rate / off.rate).collect();
        let cpu_on = median(&pairs.iter().map(|p| p.0.cpu_us).collect::<Vec<_>>());
        let cpu_off = median(&pairs.iter().map(|p| p.1.cpu_us).collect::<Vec<_>>());
        let r = median(&ratios);
        let (lo, hi) = median_interval(&ratios);
        if let Some(s) = res.series.iter_mut().find(|s| {
            s.workload == W
                && s.variant == format!("{name}, on/off per pair")
                && s.metric == "rate ratio"
        }) {
            s.note = Some(format!(
                "median over {} pairs: the statistics keep {r:.3}x of the rate without them ({:.1}% cost; 95% interval of the median {lo:.3}x to {hi:.3}x); cluster CPU per message {cpu_on:.1} us on, {cpu_off:.1} us off ({:+.1}%)",
                ratios.len(),
                (1.0 - r) * 100.0,
                (cpu_on / cpu_off - 1.0) * 100.0
            ));
        }
    }
    Ok(())
}
