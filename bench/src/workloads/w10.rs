//! W10: production, mimicked. Every system at once on the same database, each with producers
//! at a fixed rate and its consumers, while one session opens a long REPEATABLE READ
//! transaction at fixed intervals (full mode: 2 minutes every 5, for 15 minutes), as a report
//! or a forgotten session would. One held snapshot pins the horizon of the whole database, so
//! the systems live through the same holds side by side (and share the two cores: a system
//! that burns CPU walking dead rows slows the others, as it would in production). The backlog
//! of each system, second by second, goes to a CSV and a plot (PNG, matplotlib) next to the
//! results.
//!
//! Beside the backlog, W10 writes what explains it (`<run>.w10.csv`'s later columns and
//! `<run>.w10.waits.csv`): per system and second, the rounds its consumers made, the slowest
//! of them and the highest message id they took; pgflow's claim cursor and due time; which
//! tables autovacuum was working on and in which phase; and, sampled ten times a second from
//! `pg_stat_activity`, what each system's consumers and producers, autovacuum and the workers
//! were doing (on CPU, idle, or the wait event).
use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::report::{median, Results};
use crate::systems::{connect, spawn_ticker, Consumer, Sys};
use crate::{Res, PAYLOAD, QUEUE};

struct Counters {
    sent: AtomicU64,
    consumed: AtomicU64,
    /// Consumer rounds, the slowest round since the last second (microseconds), and the
    /// highest id taken so far.
    rounds: AtomicU64,
    slowest_us: AtomicU64,
    last_id: AtomicU64,
}

/// Who a backend of the run is: (backend pid, system, "consumer" or "producer").
type Pids = Arc<Mutex<Vec<(i32, Sys, &'static str)>>>;

/// Per second: (who, what it was doing) -> samples.
type Waits = BTreeMap<(u64, String, String), u32>;

/// Samples `pg_stat_activity` ten times a second until `stop`; each sample is counted under
/// the second (since `t0`) it fell in.
fn sample_waits(dsn: &str, pids: &Pids, t0: Instant, stop: &AtomicBool) -> Res<Waits> {
    let mut c = connect(dsn)?;
    let st = c.prepare(
        "SELECT pid, backend_type, coalesce(state, ''), coalesce(wait_event_type, ''),
                coalesce(wait_event, '')
           FROM pg_stat_activity
          WHERE (datname = current_database() OR backend_type <> 'client backend')
            AND pid <> pg_backend_pid()",
    )?;
    let mut waits = Waits::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        next += Duration::from_millis(100);
        let second = Instant::now().saturating_duration_since(t0).as_secs();
        c.execute("SELECT pg_stat_clear_snapshot()", &[])?;
        let rows = c.query(&st, &[])?;
        let known = pids.lock().map_err(|_| "pid list poisoned")?.clone();
        for r in rows {
            let (pid, kind, state, wtype, wevent): (i32, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let who = match known.iter().find(|k| k.0 == pid) {
                Some((_, sys, role)) => format!("{} {role}", sys.name()),
                None if kind == "client backend" => continue,
                None => kind,
            };
            let what = if !wtype.is_empty() {
                format!("{wtype}:{wevent}")
            } else if state.is_empty() || state == "active" {
                "CPU".to_string()
            } else {
                state
            };
            *waits.entry((second, who, what)).or_default() += 1;
        }
    }
    Ok(waits)
}

/// One system's second.
struct Row {
    second: u64,
    sys: Sys,
    sent: u64,
    /// Consumed in this second.
    per: u64,
    backlog: i64,
    held: bool,
    rounds: u64,
    slowest_ms: f64,
    last_id: u64,
    /// pgflow only: the cursor's id and how far ahead its due time is (empty for others).
    mark: String,
    due: String,
    /// pgflow only: per index of `pgflow.message`, the scans and entries read in the second
    /// (`ready:scans/entries ...`; statistics reach the server up to a second late).
    index_reads: String,
    /// Shared by all systems: the tables autovacuum was on at the second's end.
    vacuum: String,
    /// Shared: the backend with the oldest xmin (`pid kind age N: query`).
    horizon: String,
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
    let pids: Pids = Arc::default();
    for &sys in &ctx.systems {
        let c = Arc::new(Counters {
            sent: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
            last_id: AtomicU64::new(0),
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
            let (stop, c, dsn, pids) = (
                Arc::clone(&stop),
                Arc::clone(&c),
                ctx.dsn.clone(),
                Arc::clone(&pids),
            );
            handles.push(thread::spawn(move || {
                let mut pg = connect(&dsn)?;
                let pid: i32 = pg.query_one("SELECT pg_backend_pid()", &[])?.get(0);
                pids.lock()
                    .map_err(|_| "pid list poisoned")?
                    .push((pid, sys, "producer"));
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
            let (stop, c, dsn, pids) = (
                Arc::clone(&stop),
                Arc::clone(&c),
                ctx.dsn.clone(),
                Arc::clone(&pids),
            );
            handles.push(thread::spawn(move || {
                let mut cons = Consumer::new(sys, &dsn, 10)?;
                let pid = cons.backend_pid()?;
                pids.lock()
                    .map_err(|_| "pid list poisoned")?
                    .push((pid, sys, "consumer"));
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let ids = cons.round()?;
                    let took = began.elapsed().as_micros() as u64;
                    let got = ids.len() as u64;
                    c.consumed.fetch_add(got, Ordering::Relaxed);
                    c.rounds.fetch_add(1, Ordering::Relaxed);
                    c.slowest_us.fetch_max(took, Ordering::Relaxed);
                    if let Some(&top) = ids.iter().max() {
                        c.last_id.fetch_max(top.max(0) as u64, Ordering::Relaxed);
                    }
                    if got == 0 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                cons.finish()
            }));
        }
    }

    let sampler = {
        let (stop, dsn, pids) = (Arc::clone(&stop), ctx.dsn.clone(), Arc::clone(&pids));
        thread::spawn(move || sample_waits(&dsn, &pids, t0, &stop))
    };
    let mut holder = connect(&ctx.dsn)?;
    // What the second's state was: pgflow's cursor (the id below which nothing is ready, and
    // how far ahead its due time is), and what autovacuum is doing.
    let mut probe = connect(&ctx.dsn)?;
    let mark_st = probe.prepare(
        // NULL: the start, or past everything (which a backlog of any size rules out).
        "SELECT coalesce(mark_msg_id::text, 'null'),
                coalesce(round(extract(epoch FROM due - clock_timestamp()), 1)::text, '')
           FROM pgflow.cursor_status() WHERE queue_name = $1",
    )?;
    let vacuum_st = probe.prepare(
        "SELECT coalesce(string_agg(relid::regclass::text || ':' || phase, ' ' ORDER BY relid), '')
           FROM pg_stat_progress_vacuum WHERE datname = current_database()",
    )?;
    // pgflow's indexes: scans and entries read (cumulative, so per second by difference),
    // which tells a claim's walk from a probe's.
    let index_st = probe.prepare(
        "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes
          WHERE relid = 'pgflow.message'::regclass ORDER BY indexrelname",
    )?;
    // Who holds the horizon back most: its pid, kind, the xmin's age and its query's start.
    let horizon_st = probe.prepare(
        "SELECT coalesce((SELECT format('%s %s age %s: %s', pid, backend_type, age(backend_xmin),
                                        translate(left(query, 40), E',\n', '; '))
                            FROM pg_stat_activity
                           WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
                           ORDER BY age(backend_xmin) DESC LIMIT 1), '')",
    )?;
    let mut index_before: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let has_pgflow = ctx.systems.contains(&Sys::Pgflow);
    let mut held = false;
    let mut rows: Vec<Row> = Vec::new();
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
        let (mark, due): (String, String) = if has_pgflow {
            probe
                .query_opt(&mark_st, &[&QUEUE])?
                .map(|r| (r.get(0), r.get(1)))
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let vacuum: String = probe.query_one(&vacuum_st, &[])?.get(0);
        let horizon: String = probe.query_one(&horizon_st, &[])?.get(0);
        let mut index_reads = String::new();
        if has_pgflow {
            probe.execute("SELECT pg_stat_clear_snapshot()", &[])?;
            for r in probe.query(&index_st, &[])? {
                let (name, scans, tuples): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                let (scans0, tuples0) = index_before
                    .insert(name.clone(), (scans, tuples))
                    .unwrap_or((scans, tuples));
                let short = name.trim_start_matches("message_");
                if !index_reads.is_empty() {
                    index_reads.push(' ');
                }
                index_reads.push_str(&format!("{short}:{}/{}", scans - scans0, tuples - tuples0));
            }
        }
        for (i, (sys, c)) in counters.iter().enumerate() {
            let (sent, consumed) = (
                c.sent.load(Ordering::Relaxed),
                c.consumed.load(Ordering::Relaxed),
            );
            let (mark, due, index_reads) = match sys {
                Sys::Pgflow => (mark.clone(), due.clone(), index_reads.clone()),
                _ => Default::default(),
            };
            rows.push(Row {
                second: s,
                sys: *sys,
                sent,
                per: consumed - last[i],
                backlog: sent as i64 - consumed as i64,
                held,
                rounds: c.rounds.swap(0, Ordering::Relaxed),
                slowest_ms: c.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
                last_id: c.last_id.load(Ordering::Relaxed),
                mark,
                due,
                index_reads,
                vacuum: vacuum.clone(),
                horizon: horizon.clone(),
            });
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
    let waits = sampler.join().map_err(|_| "W10 sampler panicked")??;

    // The series, then the plot.
    let csv = ctx.out_base.with_extension("w10.csv");
    let mut text = String::from(
        "second,system,sent,consumed_per_second,backlog,holding,rounds,slowest_round_ms,last_id,cursor_mark,due_in_s,index_scans_entries,vacuum,oldest_xmin\n",
    );
    for r in &rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{:.1},{},{},{},{},{},{}\n",
            r.second,
            r.sys.name(),
            r.sent,
            r.per,
            r.backlog,
            u8::from(r.held),
            r.rounds,
            r.slowest_ms,
            r.last_id,
            r.mark,
            r.due,
            r.index_reads,
            r.vacuum,
            r.horizon
        ));
    }
    fs::write(&csv, text)?;
    let mut text = String::from("second,who,what,samples\n");
    for ((s, who, what), n) in &waits {
        text.push_str(&format!("{s},{who},{what},{n}\n"));
    }
    fs::write(ctx.out_base.with_extension("w10.waits.csv"), text)?;
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
        let mine: Vec<_> = rows.iter().filter(|r| r.sys == sys).collect();
        let during: Vec<f64> = mine
            .iter()
            .filter(|r| r.held)
            .map(|r| r.per as f64)
            .collect();
        // On a saturated machine the producers fall short of the offered rate during the
        // holds too: what a system consumed then, against what its own producers sent then.
        let (mut sent_held, mut consumed_held, mut prev_sent) = (0u64, 0u64, 0u64);
        for r in &mine {
            if r.held {
                sent_held += r.sent - prev_sent;
                consumed_held += r.per;
            }
            prev_sent = r.sent;
        }
        let max_backlog = mine.iter().map(|r| r.backlog).max().unwrap_or(0) as f64;
        let last_backlog = mine.last().map_or(0, |r| r.backlog) as f64;
        // After each hold ends: seconds until the backlog is under 2 s of production.
        let mut recoveries = Vec::new();
        for r in mine.windows(2) {
            if r[0].held && !r[1].held {
                let from = r[1].second;
                let t = mine
                    .iter()
                    .filter(|x| x.second >= from)
                    .find(|x| (x.backlog as f64) < 2.0 * rate as f64)
                    .map_or(f64::NAN, |x| (x.second - from) as f64);
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
            "consumed during holds / sent during holds",
            "%",
            true,
            sys,
            consumed_held as f64 / sent_held.max(1) as f64 * 100.0,
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
            "  W10 {}: during holds {:.0}/s of {rate}/s ({consumed_held} of the {sent_held} sent then), largest backlog {max_backlog:.0}, at the end {last_backlog:.0}, recoveries {recoveries:?} s",
            sys.name(),
            median(&during)
        );
    }
    for &sys in &ctx.systems {
        sys.drop(&mut admin, QUEUE)?;
    }
    Ok(())
}
