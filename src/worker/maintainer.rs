//! A database's worker ("pgflow worker" in pg_stat_activity, with its database).
//!
//! Each tick it runs `pgflow.maintain()` in its own transaction: expire leases (retry with
//! backoff, or dead-letter), make due delayed and retried messages ready, prune archives past
//! their retention. Every job does bounded batches per queue; a round that fills a batch is
//! followed at once by another (at most `MAX_ROUNDS` per tick). An error ends the process (the
//! transaction rolls back); the launcher restarts it with backoff, and no other database's
//! worker is affected. SIGTERM cancels a running round at its next interrupt check.
use pgrx::prelude::*;

use super::{
    handle_interrupts, micros, now, policy, reindexer, setup_signals, IdleReason, SlotState,
    REGISTRY, REINDEX_CHECK, REINDEX_HORIZON_SECS, REINDEX_START_TIMEOUT,
};
use crate::guc;
use crate::ipc;

const MAX_ROUNDS: usize = 10;

/// Takes the slot the launcher prepared; false when there is none to take (stopped meanwhile,
/// or another process already has it).
fn attach(dboid: u32) -> bool {
    let mut reg = REGISTRY.exclusive();
    let Some(slot) = reg.find(dboid) else {
        return false;
    };
    match slot.state {
        SlotState::Starting if slot.pid == 0 => {
            slot.pid = unsafe { pg_sys::MyProcPid };
            ipc::worker_started(dboid);
            slot.started_at = now();
            slot.notified = false;
            slot.set_state(SlotState::Running);
            true
        }
        SlotState::Stopping if slot.pid == 0 => {
            slot.set_state(SlotState::Held);
            false
        }
        _ => false,
    }
}

/// Runs on every exit, planned or not: frees the slot and decides what the launcher does next.
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    let me = unsafe { pg_sys::MyProcPid };
    let (waiter, launcher) = {
        let mut reg = REGISTRY.exclusive();
        let launcher = reg.launcher_latch;
        let Some(slot) = reg.find(dboid) else { return };
        if slot.pid != me {
            return;
        }
        slot.pid = 0;
        ipc::worker_exited(dboid);
        match slot.state {
            SlotState::Stopping => slot.set_state(SlotState::Held),
            SlotState::Idle | SlotState::Wanted => {} // planned: idle, or start over (go_idle)
            _ => {
                // Unplanned: an error, pg_terminate_backend, a failed connection.
                let ran = now() - slot.started_at;
                slot.failures = if ran >= micros(policy::HEALTHY_RUN) {
                    1
                } else {
                    slot.failures + 1
                };
                slot.restarts += 1;
                slot.not_before = now() + micros(policy::restart_delay(slot.failures as u32));
                slot.set_state(SlotState::Wanted);
            }
        }
        // A running index rebuild goes with the worker, so that a command waiting for this
        // database's sessions (DROP DATABASE, through hook.rs) does not wait for it.
        if slot.reindex_pid > 0 {
            // SAFETY: a plain signal to a process of this server; `die` handles it.
            unsafe { libc::kill(slot.reindex_pid, libc::SIGTERM) };
        } else if slot.reindex_pid == -1 {
            // Asked for and not attached yet: it finds no request and exits.
            slot.reindex_pid = 0;
        }
        (std::mem::take(&mut slot.waiter_latch), launcher)
    };
    ipc::set_latch(waiter);
    ipc::set_latch(launcher);
}

fn go_idle(dboid: u32, why: IdleReason) {
    let mut reg = REGISTRY.exclusive();
    if let Some(slot) = reg.find(dboid) {
        if why == IdleReason::NoExtension && slot.notified {
            // The extension was created after this worker's check began: start over.
            slot.notified = false;
            slot.not_before = 0;
            slot.set_state(SlotState::Wanted);
            return;
        }
        slot.idle_reason = why;
        slot.set_state(SlotState::Idle);
    }
}

fn extension_exists() -> bool {
    unsafe { pg_sys::get_extension_oid(c"pgflow".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Runs `f` in a transaction of its own, as pgflow_owner; None when the extension is gone.
pub(super) fn as_owner<T>(activity: &std::ffi::CStr, f: impl FnOnce() -> T) -> Option<T> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, activity.as_ptr());
    }
    // The round runs as pgflow_owner, the role that owns pgflow's objects and nothing else
    // (sql/finalize.sql), not as the bootstrap superuser the worker connected as. Before
    // ALTER EXTENSION pgflow UPDATE from 0.1.0 that role may not exist yet: then it runs as
    // before. An error ends the process, so only the normal path restores the user.
    let owner = unsafe { pg_sys::get_role_oid(c"pgflow_owner".as_ptr(), true) };
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    if owner != pg_sys::InvalidOid {
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
    }
    // An ERROR in `f` propagates and ends the process; Postgres rolls the transaction back.
    let result = extension_exists().then(f);
    if owner != pg_sys::InvalidOid {
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    }
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_stat(false);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    result
}

/// One round of maintenance in its own transaction; None when the extension is gone.
fn round(batch: i32, prune_batch: i32) -> Option<(i64, i64, i64)> {
    let sql = "SELECT coalesce(sum(processed) FILTER (WHERE job = 'expire_leases'), 0)::int8, \
                      coalesce(sum(processed) FILTER (WHERE job = 'promote_delayed'), 0)::int8, \
                      coalesce(sum(processed) FILTER (WHERE job = 'prune_archive'), 0)::int8 \
                 FROM pgflow.maintain(NULL, $1, $2)";
    as_owner(c"pgflow.maintain()", || {
        // `select`, not pgrx's `get_*_with_args`: those force a transaction id (and a commit
        // record) even when the round changes nothing, which an idle server should not pay.
        Spi::connect(|client| {
            let row = client
                .select(sql, Some(1), &[batch.into(), prune_batch.into()])?
                .first();
            Ok::<_, pgrx::spi::SpiError>((
                row.get::<i64>(1)?.unwrap_or(0),
                row.get::<i64>(2)?.unwrap_or(0),
                row.get::<i64>(3)?.unwrap_or(0),
            ))
        })
        .unwrap_or_else(|e| pgrx::error!("pgflow.maintain() failed: {e}"))
    })
}

/// Once per tick, in a transaction of its own: rebuilds the queues' statistics when shared
/// memory lacks them (after a restart, or `pgflow.stats` turned back on; see ipc/stats.rs),
/// and notes what holds back the horizon for the exporter. A database whose extension is
/// older than this library (before ALTER EXTENSION UPDATE) has no `_stats_tick`: skipped.
fn stats_tick(dboid: u32) {
    let looked = as_owner(c"pgflow._stats_tick()", || {
        Spi::connect(|client| {
            // What this extension version has (the links since 0.3.0), in one query.
            let has = client
                .select(
                    "SELECT pg_catalog.to_regprocedure('pgflow._stats_tick()') IS NOT NULL, \
                            pg_catalog.to_regprocedure('pgflow._links_state()') IS NOT NULL",
                    Some(1),
                    &[],
                )?
                .first();
            let has_links = has.get::<bool>(2)?.unwrap_or(false);
            if !has.get::<bool>(1)?.unwrap_or(false) {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let row = client
                .select(
                    "SELECT horizon_age, horizon_xmin_age FROM pgflow._stats_tick()",
                    Some(1),
                    &[],
                )?
                .first();
            let horizon = (
                row.get::<f64>(1)?.unwrap_or(0.0),
                row.get::<i32>(2)?.unwrap_or(0),
            );
            // The links' summary for the endpoint and the status page (sql/links.sql), once
            // the extension has them (after ALTER EXTENSION UPDATE from 0.2.0).
            if !has_links {
                return Ok(Some((horizon, (0, 0, 0, 0, 0.0, 0), Vec::new())));
            }
            // With this site's end of links: pgflow's subscriptions that are enabled and have no
            // apply worker, and then the replication launcher's pid (see `nudge_launcher`).
            let row = client
                .select(
                    "WITH idle AS ( \
                         SELECT pg_catalog.string_agg(s.subname, ', ' ORDER BY s.subname) AS names \
                           FROM pg_catalog.pg_subscription s \
                          WHERE s.subdbid = $1 AND s.subenabled AND s.subname LIKE 'pgflow\\_from\\_%' \
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription w \
                                             WHERE w.subid = s.oid AND w.relid IS NULL \
                                               AND w.pid IS NOT NULL)) \
                     SELECT (SELECT names FROM idle), \
                            (SELECT a.pid FROM pg_catalog.pg_stat_activity a \
                              WHERE (SELECT names FROM idle) IS NOT NULL \
                                AND a.backend_type = 'logical replication launcher' LIMIT 1)",
                    Some(1),
                    &[pg_sys::Oid::from(dboid).into()],
                )?
                .first();
            let idle = row.get::<String>(1)?;
            let launcher = row.get::<i32>(2)?.unwrap_or(0);
            nudge_launcher(idle, launcher);
            // Every link, once (its outbox counted once a tick): the summary over all of them,
            // and the first LINK_ROWS by name one by one (timestamps as Postgres keeps them:
            // µs since 2000-01-01).
            let table = client.select(
                "SELECT link_name, remote_site, state, alerting, backlog, \
                        coalesce(oldest_age, 0)::float8, forwarded, \
                        (extract(epoch FROM down_since - '2000-01-01 00:00:00+00') * 1e6)::int8, \
                        (extract(epoch FROM last_error_at - '2000-01-01 00:00:00+00') * 1e6)::int8, \
                        connected \
                   FROM pgflow._links_state() ORDER BY link_name",
                None,
                &[],
            )?;
            let mut links = (0, 0, 0, 0, 0.0_f64, 0);
            let mut rows = Vec::new();
            for r in table {
                let mut l = super::LinkRow::EMPTY;
                l.set_names(
                    &r.get::<String>(1)?.unwrap_or_default(),
                    &r.get::<String>(2)?.unwrap_or_default(),
                );
                l.state = super::LinkRow::state_code(&r.get::<String>(3)?.unwrap_or_default());
                l.alerting = r.get::<bool>(4)?.unwrap_or(false);
                l.backlog = r.get::<i64>(5)?.unwrap_or(0);
                l.oldest_age = r.get::<f64>(6)?.unwrap_or(0.0);
                l.forwarded = r.get::<i64>(7)?.unwrap_or(0);
                l.down_since = r.get::<i64>(8)?.unwrap_or(0);
                l.last_error_at = r.get::<i64>(9)?.unwrap_or(0);
                links.0 += 1;
                links.1 += i32::from(!r.get::<bool>(10)?.unwrap_or(false));
                links.2 += i32::from(l.alerting);
                links.3 += l.backlog;
                links.4 = links.4.max(l.oldest_age);
                links.5 += l.forwarded;
                if rows.len() < super::LINK_ROWS {
                    rows.push(l);
                }
            }
            Ok(Some((horizon, links, rows)))
        })
        .unwrap_or_else(|e| pgrx::error!("pgflow._stats_tick() failed: {e}"))
    });
    if let Some(Some(((age, xids), (n, down, alerting, backlog, oldest, forwarded), rows))) = looked
    {
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.find(dboid) {
            slot.horizon_age = age;
            slot.horizon_xmin_age = xids;
            slot.horizon_at = now();
            slot.links = n;
            slot.links_down = down;
            slot.links_alerting = alerting;
            slot.link_backlog = backlog;
            slot.link_oldest_age = oldest;
            slot.links_forwarded = forwarded;
            slot.links_at = slot.horizon_at;
            let n = rows.len().min(super::LINK_ROWS);
            slot.link_rows[..n].copy_from_slice(&rows[..n]);
            slot.link_rows_n = n as u8;
        }
    }
}

thread_local! {
    /// Since when (this worker's clock) some subscription of pgflow's has been enabled and
    /// without an apply worker; 0: none is.
    static IDLE_SINCE: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    /// Whether the current episode has been logged.
    static NUDGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wakes Postgres's logical replication launcher when pgflow's subscriptions named in `idle`
/// (enabled, links' remote ends in this database) have had no apply worker for longer than
/// the launcher itself waits before a restart (`wal_retrieve_retry_interval`, twice, plus a
/// second).
///
/// The launcher restarts an apply worker that exited once that interval has passed, when it
/// is woken by the worker's exit. Postgres 16.2 (the PyPI wheel the tests use) can lose that
/// wake-up: when the new worker fails at once (its publisher restarting), the launcher's wait
/// for the worker to attach consumes the latch set by its exit, and it sleeps its full cycle
/// of 3 minutes (later minor releases keep the latch set). Seen in the links layer: a kill -9
/// of the sending site left its link down for 3 minutes after the site was back. Setting the
/// launcher's latch makes it look again; a spurious wake-up costs it one scan of
/// pg_subscription, and it still keeps its own restart interval.
fn nudge_launcher(idle: Option<String>, launcher_pid: i32) {
    let t = now();
    let Some(names) = idle else {
        IDLE_SINCE.with(|c| c.set(0));
        NUDGED.with(|c| c.set(false));
        return;
    };
    let since = IDLE_SINCE.with(|c| {
        if c.get() == 0 {
            c.set(t);
        }
        c.get()
    });
    let retry_ms = i64::from(unsafe { pg_sys::wal_retrieve_retry_interval });
    if launcher_pid == 0 || t - since < (2 * retry_ms + 1000) * 1000 {
        return;
    }
    // SAFETY: the PGPROC is looked up under ProcArrayLock and lives in shared memory for the
    // server's lifetime; setting a latch of a process that has since exited is harmless.
    let latch = unsafe {
        let proc_ = pg_sys::BackendPidGetProc(launcher_pid);
        (!proc_.is_null()).then(|| std::ptr::addr_of_mut!((*proc_).procLatch))
    };
    if let Some(latch) = latch {
        // One line per episode (an outage of the publisher is one, however long).
        if !NUDGED.with(|c| c.replace(true)) {
            pgrx::log!(
                "pgflow: subscription {names} has had no apply worker for {:.1} s; waking the logical replication launcher (again every {:.1} s while it has none)",
                (t - since) as f64 / 1e6,
                (2 * retry_ms + 1000) as f64 / 1e3
            );
        }
        unsafe { pg_sys::SetLatch(latch) };
        IDLE_SINCE.with(|c| c.set(t));
    }
}

/// Every `REINDEX_CHECK`, unless a rebuild runs or the horizon is held: when one of the
/// churning tables' indexes take over `pgflow.reindex_min_size` and over four times its heap,
/// starts the rebuilder on it (reindexer.rs).
fn check_indexes(dboid: u32) {
    let min_kb = guc::REINDEX_MIN_SIZE.get();
    if min_kb <= 0 {
        return;
    }
    let t = now();
    let datname = {
        let mut reg = REGISTRY.exclusive();
        let Some(slot) = reg.find(dboid) else { return };
        if slot.reindex_pid == -1 && t - slot.reindex_started_at > micros(REINDEX_START_TIMEOUT) {
            pgrx::warning!("pgflow: the index rebuilder never started; trying again in an hour");
            slot.reindex_gave_up();
        }
        if slot.reindex_pid != 0 || t < slot.reindex_next_check {
            return;
        }
        slot.reindex_next_check = t + micros(REINDEX_CHECK);
        if slot.horizon_age > REINDEX_HORIZON_SECS {
            return;
        }
        slot.name()
    };
    let min_bytes = (i64::from(min_kb) * 1024).max(reindexer::FLOOR_BYTES);
    let found = as_owner(c"pgflow: index sizes", || {
        Spi::connect(|client| {
            let rows = client.select(reindexer::CHECK_SQL, Some(1), &[min_bytes.into()])?;
            if rows.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let row = rows.first();
            Ok(Some((
                row.get::<i32>(1)?.unwrap_or(0),
                row.get::<i64>(2)?.unwrap_or(0),
                row.get::<i64>(3)?.unwrap_or(0),
            )))
        })
        .unwrap_or_else(|e| pgrx::error!("pgflow: index size check failed: {e}"))
    });
    let Some(Some((n, heap, indexes))) = found else {
        // Nothing to rebuild (any more): a failure reported before is behind us.
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.find(dboid) {
            slot.reindex_failed = false;
        }
        return;
    };
    let n = u8::try_from(n).unwrap_or(0);
    {
        let mut reg = REGISTRY.exclusive();
        let Some(slot) = reg.find(dboid) else { return };
        slot.reindex_pid = -1;
        slot.reindex_table = n;
        slot.reindex_started_at = now();
        slot.reindex_before = indexes;
    }
    pgrx::log!(
        "pgflow: rebuilding the indexes of {}: {:.1} MB of indexes over {:.1} MB of heap",
        reindexer::table_name(n),
        indexes as f64 / 1048576.0,
        heap as f64 / 1048576.0
    );
    if !reindexer::start(dboid, &datname) {
        pgrx::warning!(
            "pgflow: no background worker slot for the index rebuild (max_worker_processes); \
             trying again in an hour"
        );
        if let Some(slot) = REGISTRY.exclusive().find(dboid) {
            slot.reindex_gave_up();
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgflow_worker_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    setup_signals();
    if !attach(dboid) {
        return;
    }
    unsafe {
        pg_sys::before_shmem_exit(Some(on_exit), arg);
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            pg_sys::Oid::from(dboid),
            pg_sys::InvalidOid,
            0,
        );
    }
    // The worker runs as the bootstrap superuser: no database's or role's default search_path
    // (which a database owner can set, and which names schemas the owner can write) applies to
    // what it runs. Every pgflow function pins its own path too (sql/finalize.sql).
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    // Per-database settings (ALTER DATABASE ... SET pgflow.enabled = off) apply from here.
    if !guc::ENABLED.get() {
        go_idle(dboid, IdleReason::Disabled);
        return;
    }
    let mut next_round = 0i64;
    loop {
        // A reload re-reads the settings below; per-database settings apply at the next start.
        if handle_interrupts() {
            ipc::stats::sync_enabled();
        }
        let tick = i64::from(guc::TICK_MS.get()) * 1000;
        // A read-only server (default_transaction_read_only, as pg_auto_failover sets it on a
        // promoted standby until the old primary is known to be down): every round would fail
        // on its first write, so the worker waits, says so in worker_status(), and resumes
        // with the next tick after the setting goes off.
        // SAFETY: a GUC variable of this process, set by its own config reloads.
        let read_only = unsafe { pg_sys::DefaultXactReadOnly };
        {
            let mut reg = REGISTRY.exclusive();
            if let Some(slot) = reg.find(dboid) {
                if slot.read_only != read_only {
                    pgrx::log!(
                        "pgflow: {} rounds: default_transaction_read_only is {}",
                        if read_only { "pausing" } else { "resuming" },
                        if read_only { "on" } else { "off" }
                    );
                }
                slot.read_only = read_only;
            }
        }
        if read_only {
            next_round = now() + tick;
        }
        if now() >= next_round {
            stats_tick(dboid);
            // Once per server life, by whichever worker sees it first: the claim cursor's
            // table was full for some queue (worker_status() and the endpoint count it).
            if let Some(n) = ipc::cursor::take_warning() {
                pgrx::warning!(
                    "pgflow: the claim cursor's shared table is full (pgflow.max_queues = {} queues of all databases; {n} lookups refused so far): queues without an entry read from their start, which is slow under a held snapshot; raise pgflow.max_queues (a restart) or drop unused queues or databases (worker_status(): cursor_free)",
                    ipc::cursor::len()
                );
            }
            let batch = guc::BATCH_SIZE.get();
            let prune_batch = guc::PRUNE_BATCH_SIZE.get();
            for _ in 0..MAX_ROUNDS {
                let Some((expired, promoted, pruned)) = round(batch, prune_batch) else {
                    go_idle(dboid, IdleReason::NoExtension);
                    return;
                };
                {
                    let mut reg = REGISTRY.exclusive();
                    if let Some(slot) = reg.find(dboid) {
                        slot.ticks += 1;
                        slot.last_tick_at = now();
                        slot.expired += expired;
                        slot.promoted += promoted;
                        slot.pruned += pruned;
                    }
                }
                let full = expired >= i64::from(batch)
                    || promoted >= i64::from(batch)
                    || pruned >= i64::from(prune_batch);
                if !full {
                    break;
                }
                handle_interrupts();
                // A reload may have made the server read-only: the next round would fail.
                // SAFETY: as above.
                if unsafe { pg_sys::DefaultXactReadOnly } {
                    break;
                }
            }
            check_indexes(dboid);
            next_round = now() + tick;
        }
        // Trailing NOTIFYs of throttled queues (ipc::notify); a sender's commit wakes us.
        let mut wake_at = next_round;
        if let Some(at) = ipc::notify::flush(dboid) {
            wake_at = wake_at.min(at);
        }
        ipc::sleep((wake_at - now()) / 1000 + 1);
    }
}
