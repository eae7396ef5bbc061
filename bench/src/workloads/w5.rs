use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::probes::{cpu_secs, rotation};
use crate::report::Results;
use crate::systems::{connect, spawn_ticker, Consumer, Sys};
use crate::{Res, PAYLOAD, QUEUE};

/// W5: latency at a fixed send rate, from send commit to a consumer holding the message; then
/// the CPU the waiting consumer burns on an empty queue.
pub(crate) fn w5(ctx: &Ctx, res: &mut Results) -> Res<()> {
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
