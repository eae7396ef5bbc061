use super::{steady, Ctx};
use crate::probes::{rotation, size_and_dead};
use crate::report::Results;
use crate::{Res, QUEUE};

pub(crate) fn w4(ctx: &Ctx, res: &mut Results) -> Res<()> {
    for &consumers in &ctx.plan.w4_consumers {
        for rep in 0..ctx.plan.repeats {
            for sys in rotation(&ctx.systems, rep) {
                let k = if sys.competing_consumers() {
                    consumers
                } else {
                    1
                };
                if !sys.competing_consumers() && consumers != ctx.plan.w4_consumers[0] {
                    continue;
                }
                let mut admin = ctx.admin()?;
                sys.recreate(&mut admin, QUEUE)?;
                sys.reset(&mut admin, ctx.clean_tables)?;
                let r = steady(ctx, sys, 4, k, ctx.plan.w4_secs, &mut |_| {})?;
                let variant = format!("4 producers, {consumers} consumers");
                let note = (!sys.competing_consumers())
                    .then_some("one consumer (no competing consumers in PgQ); ticks every 10 ms");
                res.add(
                    "W4 steady",
                    &variant,
                    "send rate",
                    "msg/s",
                    true,
                    sys,
                    r.sent as f64 / r.secs,
                    note,
                );
                res.add(
                    "W4 steady",
                    &variant,
                    "consume rate",
                    "msg/s",
                    true,
                    sys,
                    r.consumed as f64 / r.secs,
                    note,
                );
                res.add(
                    "W4 steady",
                    &variant,
                    "final depth",
                    "msgs",
                    false,
                    sys,
                    *r.depth.last().unwrap_or(&0) as f64,
                    note,
                );
                eprintln!(
                    "  W4 {variant} {}: send {:.0}/s consume {:.0}/s depth {:?}",
                    sys.name(),
                    r.sent as f64 / r.secs,
                    r.consumed as f64 / r.secs,
                    r.depth
                );
                if consumers == ctx.plan.w4_consumers[0] {
                    let rels = sys.relations(&mut admin)?;
                    let (_, dead) = size_and_dead(&mut admin, &rels)?;
                    res.add(
                        "W6 size",
                        "after W4",
                        "dead tuples",
                        "rows",
                        false,
                        sys,
                        dead,
                        None,
                    );
                }
                sys.drop(&mut admin, QUEUE)?;
            }
        }
    }
    Ok(())
}
