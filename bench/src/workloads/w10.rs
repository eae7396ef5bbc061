//! W10: production, mimicked. Every system at once on the same database, each with producers
//! at a fixed rate and its consumers, while one session opens a long REPEATABLE READ
//! transaction at fixed intervals (full mode: 2 minutes every 5, for 15 minutes), as a report
//! or a forgotten session would. One held snapshot pins the horizon of the whole database, so
//! the systems live through the same holds side by side (and share the two cores: a system
//! that burns CPU walking dead rows slows the others, as it would in production). The backlog
//! of each system, second by second, goes to a CSV and a plot (PNG, matplotlib) next to the
//! results.
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::report::{median, Results};
use crate::systems::{connect, spawn_ticker, Consumer, Sys};
use crate::{Res, PAYLOAD, QUEUE};

struct Counters {
    sent: AtomicU64,
    consumed: AtomicU64,
}

pub(crate) fn w10(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let p = &ctx.plan;
    let (secs, period, hold, first, rate) = (
        p.w10_secs,
        p.w10_period,
        p.w10_hold,
        p.w10_first_hold,
        p.w10_rate,
    );
    let holding = |t: u64| t >= first && (t - first) % period < hold && t < secs;
    let mut admin = ctx.admin()?;
    for &sys in &ctx.systems {
        sys.recreate(&mut admin, QUEUE)?;
        sys.reset(&mut admin, ctx.clean_tables)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles: Vec<thread::JoinHandle<Res<()>>> = Vec::new();
    let mut counters = Vec::new();
    let t0 = Instant::now() + Duration::from_millis(500);
    for &sys in &ctx.systems {
        let c = Arc::new(Counters {
            sent: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
        });
        counters.push((sys, Arc::clone(&c)));
        if let Some(t) = spawn_ticker(sys, &ctx.dsn, Arc::clone(&stop)) {
            handles.push(thread::spawn(move || {
                t.join().map_err(|_| "ticker panicked")?;
                Ok(())
            }));
        }
        // Two producers, each on a fixed schedule of rate/2 per second: a send that falls
        // behind is made up as fast as possible, so the offered load stays the same.
        for k in 0..2u64 {
            let (stop, c, dsn) = (Arc::clone(&stop), Arc::clone(&c), ctx.dsn.clone());
            handles.push(thread::spawn(move || {
                let mut pg = connect(&dsn)?;
                let st = pg.prepare(sys.send_sql())?;
                let every = Duration::from_secs_f64(2.0 / rate as f64);
                let mut next = t0 + every.mul_f64(k as f64 / 2.0);
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    pg.execute(&st, &[&QUEUE, &PAYLOAD])?;
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    next += every;
                }
                Ok(())
            }));
        }
        let consumers = if sys.competing_consumers() { 2 } else { 1 };
        for _ in 0..consumers {
            let (stop, c, dsn) = (Arc::clone(&stop), Arc::clone(&c), ctx.dsn.clone());
            handles.push(thread::spawn(move || {
                let mut cons = Consumer::new(sys, &dsn, 10)?;
                while !stop.load(Ordering::Relaxed) {
                    let got = cons.round()?.len() as u64;
                    c.consumed.fetch_add(got, Ordering::Relaxed);
                    if got == 0 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                cons.finish()
            }));
        }
    }

    let mut holder = connect(&ctx.dsn)?;
    let mut held = false;
    // rows: (second, system, sent, consumed, backlog, holding)
    let mut rows: Vec<(u64, Sys, u64, u64, i64, bool)> = Vec::new();
    let mut last: Vec<u64> = vec![0; counters.len()];
    for s in 0..secs {
        thread::sleep((t0 + Duration::from_secs(s)).saturating_duration_since(Instant::now()));
        let want = holding(s);
        if want && !held {
            holder.batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;",
            )?;
        } else if !want && held {
            holder.batch_execute("COMMIT")?;
        }
        held = want;
        thread::sleep((t0 + Duration::from_secs(s + 1)).saturating_duration_since(Instant::now()));
        for (i, (sys, c)) in counters.iter().enumerate() {
            let (sent, consumed) = (
                c.sent.load(Ordering::Relaxed),
                c.consumed.load(Ordering::Relaxed),
            );
            rows.push((
                s,
                *sys,
                sent,
                consumed - last[i],
                sent as i64 - consumed as i64,
                held,
            ));
            last[i] = consumed;
        }
    }
    if held {
        holder.batch_execute("COMMIT")?;
    }
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().map_err(|_| "W10 thread panicked")??;
    }

    // The series, then the plot.
    let csv = ctx.out_base.with_extension("w10.csv");
    let mut text = String::from("second,system,sent,consumed_per_second,backlog,holding\n");
    for (s, sys, sent, per, backlog, h) in &rows {
        text.push_str(&format!(
            "{s},{},{sent},{per},{backlog},{}\n",
            sys.name(),
            u8::from(*h)
        ));
    }
    fs::write(&csv, text)?;
    let png = ctx.out_base.with_extension("w10.png");
    let title = format!(
        "W10: {rate} msg/s per system; a {hold} s snapshot every {period} s ({} mode)",
        ctx.mode_name
    );
    let plotted = Command::new(&ctx.python)
        .arg(ctx.bench_dir.join("plot_w10.py"))
        .args([&csv, &png])
        .arg(&title)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !plotted {
        return Err(format!("plotting {} failed (python: {})", png.display(), ctx.python).into());
    }
    eprintln!("  W10 plot: {}", png.display());

    let variant = format!("{rate}/s, {hold} s hold every {period} s");
    for &(sys, _) in &counters {
        let mine: Vec<_> = rows.iter().filter(|r| r.1 == sys).collect();
        let during: Vec<f64> = mine.iter().filter(|r| r.5).map(|r| r.3 as f64).collect();
        let max_backlog = mine.iter().map(|r| r.4).max().unwrap_or(0) as f64;
        let last_backlog = mine.last().map_or(0, |r| r.4) as f64;
        // After each hold ends: seconds until the backlog is under 2 s of production.
        let mut recoveries = Vec::new();
        for r in mine.windows(2) {
            if r[0].5 && !r[1].5 {
                let from = r[1].0;
                let t = mine
                    .iter()
                    .filter(|x| x.0 >= from)
                    .find(|x| (x.4 as f64) < 2.0 * rate as f64)
                    .map_or(f64::NAN, |x| (x.0 - from) as f64);
                recoveries.push(t);
            }
        }
        let worst_recovery = recoveries.iter().cloned().fold(0.0, f64::max);
        let note = (!sys.competing_consumers()).then_some("one consumer");
        res.add(
            "W10 production",
            &variant,
            "consume rate during holds / offered",
            "%",
            true,
            sys,
            median(&during) / rate as f64 * 100.0,
            note,
        );
        res.add(
            "W10 production",
            &variant,
            "largest backlog",
            "msgs",
            false,
            sys,
            max_backlog,
            note,
        );
        res.add(
            "W10 production",
            &variant,
            "backlog at the end",
            "msgs",
            false,
            sys,
            last_backlog,
            note,
        );
        res.add(
            "W10 production",
            &variant,
            "slowest recovery to < 2 s of backlog",
            "s",
            false,
            sys,
            worst_recovery,
            note,
        );
        eprintln!(
            "  W10 {}: during holds {:.0}/s of {rate}/s, largest backlog {max_backlog:.0}, at the end {last_backlog:.0}, recoveries {recoveries:?} s",
            sys.name(),
            median(&during)
        );
    }
    for &sys in &ctx.systems {
        sys.drop(&mut admin, QUEUE)?;
    }
    Ok(())
}
