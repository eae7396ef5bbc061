//! The SQL face of the background workers: their status, and the notice `CREATE EXTENSION` sends.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::worker::{self, reindexer, SlotState, REGISTRY};

fn ts(t: i64) -> Option<TimestampWithTimeZone> {
    (t != 0)
        .then(|| TimestampWithTimeZone::try_from(t).ok())
        .flatten()
}

/// One row per database the launcher knows: its worker's state and what it has done since the
/// server started. A caller outside pg_monitor and pgflow_admin sees only its own database's
/// row. Raises 55000 when pgflow is not in shared_preload_libraries (no workers).
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn worker_status() -> Result<
    TableIterator<
        'static,
        (
            name!(datname, String),
            name!(state, String),
            name!(pid, Option<i32>),
            name!(started_at, Option<TimestampWithTimeZone>),
            name!(last_tick_at, Option<TimestampWithTimeZone>),
            name!(ticks, i64),
            name!(expired, i64),
            name!(promoted, i64),
            name!(pruned, i64),
            name!(restarts, i32),
            name!(detail, Option<String>),
            name!(cursor_entries, i32),
            name!(cursor_free, i32),
            name!(stats_free, i32),
        ),
    >,
    ErrorReport,
> {
    if !crate::ipc::preloaded() {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgflow's background workers are not running",
            "pgflow",
        )
        .set_hint("Add pgflow to shared_preload_libraries and restart the server."));
    }
    // SAFETY: reads shared memory.
    if unsafe { pg_sys::RecoveryInProgress() } {
        // No launcher runs on a standby: say so, for this database, instead of no rows.
        let name = unsafe {
            let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let detail = "hot standby: the workers start when this server is promoted; \
                      maintenance runs on the primary"
            .to_owned();
        return Ok(TableIterator::new(vec![(
            name,
            "standby".to_owned(),
            None,
            None,
            None,
            0,
            0,
            0,
            0,
            0,
            Some(detail),
            0,
            0,
            0,
        )]));
    }
    let now = worker::now();
    // Other databases' workers only for pg_monitor (and pgflow_admin, superusers).
    let all = crate::api::access::class() != crate::api::access::Class::Grants;
    let mine = unsafe { pg_sys::MyDatabaseId }.to_u32();
    // Who holds the background worker slots, for a database that could not get one (read
    // before the registry's lock is taken: no query runs under it).
    let starved = REGISTRY
        .share()
        .slots
        .iter()
        .any(|s| s.state != SlotState::Free && s.no_bgw_slot_since != 0);
    let used_by = if starved {
        bgworkers_in_use()
    } else {
        String::new()
    };
    // A copy of the slots: what follows reads the statistics' shared memory and other
    // processes' wait events, none of it under the registry's lock.
    let slots: Vec<worker::Slot> = REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.state != SlotState::Free && (all || s.dboid == mine))
        .copied()
        .collect();
    // The shared tables' room (src/ipc/README.md): this database's claim cursor entries, and
    // the free entries of all databases.
    let cursor_used = crate::ipc::cursor::capacity(mine).0;
    let cursor_free =
        i32::try_from(crate::ipc::cursor::len().saturating_sub(cursor_used)).unwrap_or(0);
    let stats_free =
        i32::try_from(crate::ipc::stats::len().saturating_sub(crate::ipc::stats::capacity(mine).0))
            .unwrap_or(0);
    let mut rows: Vec<_> = slots
        .iter()
        .map(|s| {
            let problem = s.problem(now).map(|p| {
                if s.no_bgw_slot_since != 0 && s.state != SlotState::Running {
                    format!(
                        "{p}, used by {used_by}; its leases, retries, alerts and statistics \
                         wait (raise max_worker_processes: docs/operations.md, Sizing)"
                    )
                } else {
                    p
                }
            });
            let detail = match s.state {
                _ if problem.is_some() => problem,
                SlotState::Running if s.pid > 0 && waits_for_sync_rep(s.pid) => Some(
                    "its round waits for synchronous replication at commit (is a synchronous \
                     standby of synchronous_standby_names connected?)"
                        .to_owned(),
                ),
                SlotState::Running if s.reindex_pid != 0 => Some(format!(
                    "rebuilding the indexes of {} concurrently for {:.0} s ({:.1} MB before; \
                     pgflow.reindex_min_size)",
                    reindexer::table_name(s.reindex_table),
                    (now - s.reindex_started_at).max(0) as f64 / 1e6,
                    s.reindex_before as f64 / 1048576.0
                )),
                SlotState::Running if s.reindex_failed => Some(format!(
                    "the last index rebuild, of {}, did not finish (the server log says why); \
                     the next try comes in {:.0} s at the earliest",
                    reindexer::table_name(s.reindex_table),
                    (s.reindex_next_check - now).max(0) as f64 / 1e6
                )),
                _ => shm_detail(s.dboid),
            };
            (
                s.name(),
                s.state.label().to_owned(),
                (s.pid > 0).then_some(s.pid),
                ts(s.started_at),
                ts(s.last_tick_at),
                s.ticks,
                s.expired,
                s.promoted,
                s.pruned,
                s.restarts,
                detail,
                i32::try_from(crate::ipc::cursor::capacity(s.dboid).1).unwrap_or(i32::MAX),
                cursor_free,
                stats_free,
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TableIterator::new(rows))
}

/// What did not fit in the shared-memory tables of queues for database `db` (the claim
/// cursor's, the statistics' and the NOTIFY throttle's), if anything.
fn shm_detail(db: u32) -> Option<String> {
    let n = crate::ipc::cursor::len();
    let reserve = crate::ipc::table::reserve(n);
    let room = format!(
        "each shared table holds pgflow.max_queues = {n} queues of all databases, the last \
         {reserve} only for databases holding fewer"
    );
    let mut parts = Vec::new();
    let cursor = crate::ipc::cursor::capacity(db).3;
    if cursor > 0 {
        parts.push(format!(
            "claim cursor: {cursor} lookups found no entry for a queue of this database: \
             those queues' reads start from the queue's start"
        ));
    }
    let stats = crate::ipc::stats::refused(db);
    if stats > 0 {
        parts.push(format!(
            "statistics: {stats} lookups found no entry for a queue of this database: \
             metrics() counts rows for those queues"
        ));
    }
    let notify = crate::ipc::notify::capacity(db).1;
    if notify > 0 {
        parts.push(format!(
            "notify: {notify} sends found no throttle entry for their queue and notified \
             unthrottled"
        ));
    }
    (!parts.is_empty()).then(|| format!("{} ({room})", parts.join("; ")))
}

/// The background workers running, by type, most first ("5 pgflow worker, 1 pgflow launcher,
/// 1 logical replication launcher"): every process that takes one of `max_worker_processes`'
/// slots shows in pg_stat_activity with its worker type as `backend_type`; the server's own
/// processes are left out.
fn bgworkers_in_use() -> String {
    let query = "SELECT coalesce(string_agg(n || ' ' || backend_type, ', ' ORDER BY n DESC, backend_type), 'nothing visible')
                   FROM (SELECT backend_type, count(*) AS n FROM pg_catalog.pg_stat_activity
                          WHERE backend_type <> ALL (ARRAY['client backend', 'autovacuum launcher',
                                'autovacuum worker', 'background writer', 'checkpointer', 'walwriter',
                                'walsender', 'walreceiver', 'startup', 'archiver', 'standalone backend',
                                'slotsync worker', 'walsummarizer', 'io worker', 'logger'])
                          GROUP BY backend_type) s";
    Spi::get_one::<String>(query)
        .ok()
        .flatten()
        .unwrap_or_else(|| "(unknown)".to_owned())
}

/// Whether the backend `pid` (a worker) waits for a synchronous standby to confirm its
/// commit: its wait event, by name, which every supported version calls `SyncRep`.
fn waits_for_sync_rep(pid: i32) -> bool {
    // SAFETY: the PGPROC array lives as long as the server; a process that exits meanwhile
    // leaves a slot whose wait_event_info is read as a plain 32-bit value (never a pointer),
    // at worst naming another wait, and pgstat_get_wait_event returns a static string.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if proc_.is_null() {
            return false;
        }
        let info = std::ptr::read_volatile(&(*proc_).wait_event_info);
        let name = pg_sys::pgstat_get_wait_event(info);
        !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == b"SyncRep"
    }
}

/// Asks the launcher for a worker in this database once the current transaction commits.
/// The extension script calls it, so `CREATE EXTENSION` starts the worker; a no-op when pgflow
/// is not preloaded.
#[pg_extern(volatile, parallel_unsafe)]
fn _worker_wake() {
    if !crate::ipc::preloaded() {
        return;
    }
    let dboid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let name = unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    crate::ipc::xact::add_end_hook(request_at_commit);
    REQUEST.with(|r| r.borrow_mut().push((dboid, name)));
}

thread_local! {
    /// Workers `_worker_wake` asked for in this transaction: requested if it commits.
    static REQUEST: std::cell::RefCell<Vec<(u32, String)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An end hook of `ipc::xact`: takes the requests without allocating or panicking, and makes
/// them only on commit.
fn request_at_commit(committed: bool) {
    let requests = REQUEST
        .try_with(|r| r.try_borrow_mut().ok().map(|mut r| std::mem::take(&mut *r)))
        .ok()
        .flatten()
        .unwrap_or_default();
    if committed {
        for (dboid, name) in &requests {
            worker::request_worker(*dboid, name);
        }
    }
}
