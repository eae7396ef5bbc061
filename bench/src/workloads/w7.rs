use super::{steady, Ctx};
use crate::probes::size_and_dead;
use crate::report::{median, Results};
use crate::systems::connect;
use crate::{Res, QUEUE};

/// W7: the steady state of W4 while another session holds a REPEATABLE READ snapshot.
pub(crate) fn w7(ctx: &Ctx, res: &mut Results) -> Res<()> {
    let (b, h, a) = (ctx.plan.w7_before, ctx.plan.w7_hold, ctx.plan.w7_after);
    for sys in ctx.systems.clone() {
        let mut admin = ctx.admin()?;
        sys.recreate(&mut admin, QUEUE)?;
        sys.reset(&mut admin, ctx.clean_tables)?;
        let mut holder = connect(&ctx.dsn)?;
        let mut dead_at_release = 0.0;
        let rels = sys.relations(&mut admin)?;
        let k = if sys.competing_consumers() { 2 } else { 1 };
        let r = steady(ctx, sys, 4, k, b + h + a, &mut |s| {
            if s == b {
                holder
                    .batch_execute(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;",
                    )
                    .expect("take snapshot");
            }
            if s == b + h {
                let mut c = connect(&ctx.dsn).expect("stats connection");
                dead_at_release = size_and_dead(&mut c, &rels)
                    .map(|x| x.1)
                    .unwrap_or(f64::NAN);
                holder.batch_execute("COMMIT").expect("release snapshot");
            }
        })?;
        let ps: Vec<f64> = r.per_second.iter().map(|&x| x as f64).collect();
        let before = median(&ps[..b as usize]);
        let during = median(&ps[b as usize..(b + h) as usize]);
        let last_quarter = &ps[(b + h - (h / 4).max(1)) as usize..(b + h) as usize];
        let end_of_hold = median(last_quarter);
        let recovery = ps[(b + h) as usize..]
            .iter()
            .position(|&x| x >= 0.9 * before)
            .map(|i| i as f64 + 1.0)
            .unwrap_or(f64::NAN);
        // The backlog when the snapshot is released, in seconds of the undisturbed rate.
        let backlog_at_release = r.depth[(b + h - 1) as usize].max(0) as f64 / before;
        let variant = format!("{h} s snapshot");
        let note = (!sys.competing_consumers()).then_some("one consumer");
        res.add(
            "W7 held snapshot",
            &variant,
            "consume before",
            "msg/s",
            true,
            sys,
            before,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "during/before",
            "%",
            true,
            sys,
            during / before * 100.0,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "last quarter of hold/before",
            "%",
            true,
            sys,
            end_of_hold / before * 100.0,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "backlog at release (seconds of the rate before)",
            "s",
            false,
            sys,
            backlog_at_release,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "dead tuples at release",
            "rows",
            false,
            sys,
            dead_at_release,
            note,
        );
        res.add(
            "W7 held snapshot",
            &variant,
            "seconds to 90% after release",
            "s",
            false,
            sys,
            recovery,
            note,
        );
        eprintln!(
            "  W7 {}: before {before:.0}/s during {during:.0}/s end-of-hold {end_of_hold:.0}/s backlog at release {backlog_at_release:.1}s dead {dead_at_release:.0} recovery {recovery}s",
            sys.name()
        );
        sys.drop(&mut admin, QUEUE)?;
    }
    Ok(())
}
