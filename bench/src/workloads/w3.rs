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
                        let drained_indexes = index_oids(&mut admin, &live)?;
                        let visited = wait_autovacuum(
                            &mut admin,
                            &live,
                            &before,
                            ctx.plan.w6_autovacuum_wait,
                        )?;
                        let (bytes, _) = size_and_dead(&mut admin, &live)?;
                        let heap = heap_bytes(&mut admin, &live)?;
                        let rebuilt_early = index_oids(&mut admin, &live)? != drained_indexes;
                        let note = format!(
                            "{:.1} MB of heap and {:.1} MB of indexes and TOAST; before the \
                             prefill, with the previous workloads' leftovers, {:.1} MB ({:.1} MB \
                             of heap){}{}",
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
                            },
                            if rebuilt_early {
                                "; pgflow's worker had already rebuilt the indexes"
                            } else {
                                ""
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
                        // The free index pages autovacuum keeps: pgflow's worker rebuilds the
                        // indexes by itself (pgflow.reindex_min_size), so wait for it; pgmq's
                        // are rebuilt by hand, as its operator would; PgQ rotates its tables.
                        if sys != Sys::Pgq {
                            let t = Instant::now();
                            let note = if sys == Sys::Pgflow {
                                let limit = ctx.plan.w6_autovacuum_wait;
                                loop {
                                    let running: bool = admin
                                        .query_one(
                                            "SELECT EXISTS (SELECT FROM pg_stat_activity
                                                             WHERE backend_type = 'pgflow reindex')",
                                            &[],
                                        )?
                                        .get(0);
                                    let changed = index_oids(&mut admin, &live)? != drained_indexes;
                                    let waited = t.elapsed().as_secs_f64();
                                    if changed && !running {
                                        break format!(
                                            "rebuilt by pgflow's worker (REINDEX TABLE \
                                             CONCURRENTLY), {waited:.1} s after the row above"
                                        );
                                    }
                                    if waited > limit as f64 {
                                        break format!(
                                            "pgflow's worker did not rebuild within {limit} s"
                                        );
                                    }
                                    std::thread::sleep(std::time::Duration::from_millis(500));
                                }
                            } else {
                                for r in &live {
                                    admin.batch_execute(&format!(
                                        "REINDEX TABLE CONCURRENTLY {r}"
                                    ))?;
                                }
                                let took = t.elapsed().as_secs_f64();
                                format!("REINDEX TABLE CONCURRENTLY by hand took {took:.1} s")
                            };
                            let (after, _) = size_and_dead(&mut admin, &live)?;
                            res.add(
                                "W6 size",
                                "after autovacuum and an index rebuild",
                                "bytes on disk",
                                "MB",
                                false,
                                sys,
                                after / 1e6,
                                Some(&note),
                            );
                            eprintln!(
                                "  W6 after an index rebuild {}: {:.1} MB ({note})",
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

/// The indexes of `rels`, by OID: a rebuild gives them new ones.
fn index_oids(c: &mut postgres::Client, rels: &[String]) -> Res<Vec<i64>> {
    Ok(c.query_one(
        "SELECT coalesce(array_agg(indexrelid::int8 ORDER BY indexrelid), '{}')
           FROM pg_index WHERE indrelid = ANY($1::text[]::regclass[])",
        &[&rels],
    )?
    .get(0))
}
