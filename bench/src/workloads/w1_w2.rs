//! W1/W2 (send throughput under pgbench) and W9 (the same send with a contract).
use std::fs;

use super::{clients_variant, pgbench_tps, Ctx};
use crate::probes::rotation;
use crate::report::{median, Results};
use crate::systems::Sys;
use crate::{Res, QUEUE};

/// W1 and W2: pgbench -M prepared, fixed time, messages per second.
pub(crate) fn w1_w2(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let tmp = std::env::temp_dir().join(format!("pgflow-bench-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    for (w, batch) in [("W1 send", 1u32), ("W2 send_batch 100", 100u32)] {
        for &clients in &ctx.plan.w12_clients {
            for rep in 0..ctx.plan.repeats {
                for sys in rotation(&ctx.systems, rep) {
                    let mut admin = ctx.admin()?;
                    sys.recreate(&mut admin, QUEUE)?;
                    sys.reset(&mut admin, ctx.clean_tables)?;
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
    const SQL: &str = include_str!("../../../examples/evolution/contracts.sql");
    SQL.split("$json$")
        .nth(1)
        .filter(|s| s.contains("\"proposal_for_consensus\""))
        .ok_or_else(|| "no proposal_for_consensus contract in contracts.sql".into())
}

/// W9: what a message contract costs on send. W1's one-message send, once to a queue without a
/// contract and once to a queue with the seeds' proposal contract (12 properties, nested
/// objects, uuid and date-time formats). pgmq has no contracts; it runs the same script in both
/// rows, so its two figures show the run-to-run noise.
pub(crate) fn w9(ctx: &Ctx, res: &mut Results) -> Res<()> {
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
                    sys.reset(&mut admin, ctx.clean_tables)?;
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
