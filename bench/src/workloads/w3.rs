use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use super::Ctx;
use crate::probes::{autovacuum_state, heap_bytes, rotation, size_and_dead, wait_autovacuum};
use crate::report::Results;
use crate::systems::{Consumer, Sys};
use crate::{Res, QUEUE};

/// W3 (drain a prefilled backlog) and the W6 size figures taken around it.
pub(crate) fn w3(ctx: &Ctx, res: &mut Results) -> Res<()> {
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
                    sys.reset(&mut admin, ctx.clean_tables)?;
                    let live = sys.live_relations(&mut admin)?;
                    let (empty_bytes, _) = size_and_dead(&mut admin, &live)?;
                    let empty_heap = heap_bytes(&mut admin, &live)?;
                    sys.prefill(&mut admin, n, batch)?;
                    let rels = sys.relations(&mut admin)?;
                    // Statistics for the drain's plans; VACUUM only in clean-tables mode.
                    let prep = if ctx.clean_tables {
                        "VACUUM ANALYZE"
                    } else {
                        "ANALYZE"
                    };
                    for r in &rels {
                        admin.batch_execute(&format!("{prep} {r}"))?;
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
                    // Once per system: what the drained backlog still takes on disk after
                    // autovacuum has visited the live tables (no VACUUM of our own).
                    if rep == 0
                        && consumers == ctx.plan.w3_consumers[0]
                        && batch == ctx.plan.w3_batches[0]
                        && ctx.plan.w6_autovacuum_wait > 0
                    {
                        let before = autovacuum_state(&mut admin, &live)?;
                        let visited = wait_autovacuum(
                            &mut admin,
                            &live,
                            &before,
                            ctx.plan.w6_autovacuum_wait,
                        )?;
                        let (bytes, _) = size_and_dead(&mut admin, &live)?;
                        let heap = heap_bytes(&mut admin, &live)?;
                        let note = format!(
                            "{:.1} MB of heap and {:.1} MB of indexes and TOAST; before the \
                             prefill, with the previous workloads' leftovers, {:.1} MB ({:.1} MB \
                             of heap){}",
                            heap / 1e6,
                            (bytes - heap) / 1e6,
                            empty_bytes / 1e6,
                            empty_heap / 1e6,
                            if visited {
                                String::new()
                            } else {
                                format!(
                                    "; autovacuum did not visit within {} s",
                                    ctx.plan.w6_autovacuum_wait
                                )
                            }
                        );
                        res.add(
                            "W6 size",
                            "after a drain and autovacuum",
                            "bytes on disk",
                            "MB",
                            false,
                            sys,
                            bytes / 1e6,
                            Some(&note),
                        );
                        eprintln!(
                            "  W6 after autovacuum {}: {:.1} MB ({note})",
                            sys.name(),
                            bytes / 1e6
                        );
                        // What an operator's REINDEX CONCURRENTLY gives back on top (the free
                        // index pages autovacuum keeps); PgQ rotates its tables instead.
                        if sys != Sys::Pgq {
                            let t = Instant::now();
                            for r in &live {
                                admin.batch_execute(&format!("REINDEX TABLE CONCURRENTLY {r}"))?;
                            }
                            let took = t.elapsed().as_secs_f64();
                            let (after, _) = size_and_dead(&mut admin, &live)?;
                            let note = format!("REINDEX TABLE CONCURRENTLY took {took:.1} s");
                            res.add(
                                "W6 size",
                                "after autovacuum and REINDEX CONCURRENTLY",
                                "bytes on disk",
                                "MB",
                                false,
                                sys,
                                after / 1e6,
                                Some(&note),
                            );
                            eprintln!(
                                "  W6 after REINDEX CONCURRENTLY {}: {:.1} MB ({note})",
                                sys.name(),
                                after / 1e6
                            );
                        }
                    }
                    if (consumers == *ctx.plan.w3_consumers.last().unwrap()
                        || !sys.competing_consumers())
                        && batch == ctx.plan.w3_batches[0]
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
