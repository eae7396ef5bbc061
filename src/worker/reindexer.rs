//! Index rebuilds: gives back the index space a drain leaves behind, without stopping anything.
//!
//! Every queue's messages live in `pgflow.message`, so a drain, `purge_queue` or `drop_queue`
//! leaves its rows dead there. Autovacuum removes them and truncates the heap's empty tail, but
//! the index pages it frees stay with their indexes: a drained 200,000-message backlog keeps
//! about 200 MB of indexes over an empty table. Every `REINDEX_CHECK` the database's worker
//! (maintainer.rs) compares each churning table's indexes with its heap; when the indexes are
//! over `pgflow.reindex_min_size` and over four times the heap, it starts this process, which
//! runs `REINDEX TABLE CONCURRENTLY` on that table, as a client would, so sends and reads go
//! on while it runs (the `reindex` isolation spec) and the worker's rounds never wait for it.
//!
//! - It runs as `pgflow_owner`, the tables' owner, never as a superuser.
//! - A failed or cancelled rebuild leaves invalid `*_ccnew` (or `*_ccold`) indexes, which cost
//!   every write: the next rebuild drops them first (`DROP INDEX CONCURRENTLY`), and only when
//!   no other rebuild of the table runs (it takes the table's SHARE UPDATE EXCLUSIVE lock
//!   without waiting).
//! - Its lock waits give up after `LOCK_TIMEOUT` (a long transaction or a held snapshot would
//!   make it wait, holding a lock that keeps autovacuum and DDL off the table meanwhile); the
//!   worker does not start one while the horizon is held, and waits an hour after a failure.
//! - An error ends the process (what it created is cleaned up as above); the database's worker
//!   terminates it when it exits itself, so `DROP DATABASE` never waits for it.
use std::ffi::CStr;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

use super::maintainer::as_owner;
use super::{now, setup_signals, REGISTRY};

/// The tables whose rows churn (sent and archived, dead-lettered, deduplicated), with the
/// statement that rebuilds each one's indexes. Fixed text: no SQL is built from names.
pub const TABLES: [(&str, &CStr); 4] = [
    (
        "pgflow.message",
        c"REINDEX TABLE CONCURRENTLY pgflow.message",
    ),
    (
        "pgflow.archive",
        c"REINDEX TABLE CONCURRENTLY pgflow.archive",
    ),
    ("pgflow.dead", c"REINDEX TABLE CONCURRENTLY pgflow.dead"),
    ("pgflow.dedup", c"REINDEX TABLE CONCURRENTLY pgflow.dedup"),
];

/// The tables' sizes, for the worker's check: the one whose indexes are largest among those
/// over `$1` bytes and over four times its heap.
pub const CHECK_SQL: &str = "\
SELECT t.n, pg_catalog.pg_relation_size(t.r), pg_catalog.pg_indexes_size(t.r)
  FROM (VALUES (0, 'pgflow.message'::pg_catalog.regclass), (1, 'pgflow.archive'),
               (2, 'pgflow.dead'), (3, 'pgflow.dedup')) AS t(n, r)
 WHERE pg_catalog.pg_indexes_size(t.r) >= $1
   AND pg_catalog.pg_indexes_size(t.r) > 4 * pg_catalog.pg_relation_size(t.r)
 ORDER BY 3 DESC
 LIMIT 1";

/// Below this nothing is rebuilt, whatever `pgflow.reindex_min_size` says: an empty table's
/// indexes keep a few pages each, which a rebuild would not make smaller.
pub const FLOOR_BYTES: i64 = 1024 * 1024;

/// How long the rebuild's lock waits (for older transactions and snapshots, and the table's
/// lock) may last before it gives up.
const LOCK_TIMEOUT: &CStr = c"60s";

pub fn table_name(n: u8) -> &'static str {
    TABLES.get(usize::from(n)).map_or("?", |t| t.0)
}

/// Starts the rebuilder for `dboid`; false when no background worker slot was free.
pub fn start(dboid: u32, datname: &str) -> bool {
    BackgroundWorkerBuilder::new(&format!("pgflow index rebuild for database {datname}"))
        .set_type("pgflow reindex")
        .set_library("pgflow")
        .set_function("pgflow_reindex_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(dboid)))
        .load_dynamic()
        .is_ok()
}

/// Takes the rebuild the worker asked for: the table's number, or None when there is none to
/// take.
fn attach(dboid: u32) -> Option<u8> {
    let mut reg = REGISTRY.exclusive();
    let slot = reg.find(dboid)?;
    // The worker that asked may have exited meanwhile (and cleared the request), or a
    // database command holds the database: then nothing runs.
    if slot.reindex_pid != -1 || slot.held || slot.state != super::SlotState::Running {
        if slot.reindex_pid == -1 {
            slot.reindex_pid = 0;
        }
        return None;
    }
    slot.reindex_pid = unsafe { pg_sys::MyProcPid };
    Some(slot.reindex_table)
}

/// Runs at every exit: a rebuild that did not finish counts as failed.
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    let me = unsafe { pg_sys::MyProcPid };
    let mut reg = REGISTRY.exclusive();
    let Some(slot) = reg.find(dboid) else { return };
    if slot.reindex_pid != me {
        return;
    }
    if slot.reindex_ended_at < slot.reindex_started_at {
        slot.reindex_gave_up();
    } else {
        slot.reindex_pid = 0;
    }
}

/// Runs one utility statement at top level, as a client's simple query does: outside any
/// transaction block, so that `REINDEX ... CONCURRENTLY` and `DROP INDEX CONCURRENTLY` can
/// commit the transactions of their phases. An ERROR ends the process.
///
/// # Safety
/// Outside any transaction, in a background worker connected to a database.
unsafe fn run_top_level(sql: &CStr) {
    unsafe {
        // The parse tree and the portal's statement list outlive the transactions the command
        // commits on its way (a client's query keeps them in MessageContext).
        let ctx = pg_sys::AllocSetContextCreateInternal(
            pg_sys::TopMemoryContext,
            c"pgflow reindex".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, sql.as_ptr());
        pg_sys::StartTransactionCommand();
        pg_sys::MemoryContextSwitchTo(ctx);
        let parsed = pg_sys::pg_parse_query(sql.as_ptr());
        if parsed.is_null() || (*parsed).length != 1 {
            pgrx::error!("pgflow: expected one statement");
        }
        let raw = (*(*parsed).elements).ptr_value as *mut pg_sys::RawStmt;
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            raw,
            sql.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
        );
        let plans = pg_sys::pg_plan_queries(queries, sql.as_ptr(), 0, std::ptr::null_mut());
        pg_sys::PopActiveSnapshot();
        let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
        (*portal).visible = false;
        pg_sys::PortalDefineQuery(
            portal,
            std::ptr::null(),
            sql.as_ptr(),
            pg_sys::CreateCommandTag((*raw).stmt),
            plans,
            std::ptr::null_mut(),
        );
        pg_sys::PortalStart(portal, std::ptr::null_mut(), 0, std::ptr::null_mut());
        let dest = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestNone);
        let all = std::ffi::c_long::MAX; // FETCH_ALL
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
        pg_sys::PortalRun(portal, all, true, true, dest, dest, std::ptr::null_mut());
        #[cfg(feature = "pg18")]
        pg_sys::PortalRun(portal, all, true, dest, dest, std::ptr::null_mut());
        if let Some(destroy) = (*dest).rDestroy {
            destroy(dest);
        }
        pg_sys::PortalDrop(portal, false);
        // The transaction open now is the last one the command started.
        pg_sys::CommitTransactionCommand();
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        pg_sys::MemoryContextDelete(ctx);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
}

/// Sets a setting for the rest of this process (not SET LOCAL: the rebuild commits on its way).
fn set_session(name: &CStr, value: &CStr) {
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgflow_reindex_main(arg: pg_sys::Datum) {
    let dboid = arg.value() as u32;
    setup_signals();
    let Some(n) = attach(dboid) else { return };
    let (table, reindex_sql) = TABLES[usize::from(n)];
    unsafe {
        pg_sys::before_shmem_exit(Some(on_exit), arg);
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            pg_sys::Oid::from(dboid),
            pg_sys::InvalidOid,
            0,
        );
    }
    // As in the database's worker: no database's or role's search_path applies here.
    set_session(c"search_path", c"pg_catalog, pg_temp");
    set_session(c"lock_timeout", LOCK_TIMEOUT);

    // The leftovers of a rebuild that failed, on the table and on its TOAST table, if no
    // rebuild of the table runs now. The names come from the catalog (Postgres gives them)
    // and are quoted. None when the extension is gone.
    let checked = as_owner(c"pgflow: index rebuild, checks", || {
        let owner = unsafe { pg_sys::get_role_oid(c"pgflow_owner".as_ptr(), true) };
        Spi::connect(|client| {
            let row = client
                .select(
                    "SELECT r::pg_catalog.oid, pg_catalog.pg_indexes_size(r)
                       FROM pg_catalog.to_regclass($1) AS r",
                    Some(1),
                    &[table.into()],
                )?
                .first();
            let (rel, before) = (row.get::<pg_sys::Oid>(1)?, row.get::<i64>(2)?);
            let Some(rel) = rel else {
                return Ok::<_, pgrx::spi::SpiError>((owner, None, 0));
            };
            let free = unsafe {
                pg_sys::ConditionalLockRelationOid(
                    rel,
                    pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE,
                )
            };
            if !free {
                return Ok((owner, None, 0));
            }
            let mut names = Vec::new();
            for row in client.select(
                "SELECT pg_catalog.format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I',
                                          n.nspname, c.relname)
                   FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE i.indrelid IN ($1, (SELECT t.reltoastrelid FROM pg_catalog.pg_class t
                                             WHERE t.oid = $1))
                    AND NOT i.indisvalid
                    AND c.relname::text ~ '_cc(new|old)[0-9]*$'",
                None,
                &[rel.into()],
            )? {
                if let Some(s) = row.get::<String>(1)? {
                    names.push(s);
                }
            }
            Ok((owner, Some(names), before.unwrap_or(0)))
        })
        .unwrap_or_else(|e| pgrx::error!("pgflow: index rebuild check failed: {e}"))
    });
    let Some((owner, leftovers, before)) = checked else {
        return;
    };
    let Some(leftovers) = leftovers else {
        // Another rebuild (an operator's) or a VACUUM holds the table, or it is gone: not
        // now, and not again before REINDEX_AFTER.
        pgrx::log!("pgflow: {table} is busy (a VACUUM or another rebuild): no index rebuild now");
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.find(dboid) {
            let t = now();
            slot.reindex_ended_at = t;
            slot.reindex_next_check = t + super::micros(super::REINDEX_AFTER);
        }
        return;
    };

    // Everything from here runs as pgflow_owner (the tables' owner). Before ALTER EXTENSION
    // pgflow UPDATE from 0.1.0 that role may not exist: then nothing is rebuilt.
    if owner == pg_sys::InvalidOid {
        pgrx::log!("pgflow: no index rebuild: role pgflow_owner is missing (ALTER EXTENSION pgflow UPDATE creates it)");
        return;
    }
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    for drop in &leftovers {
        pgrx::log!("pgflow: dropping an invalid index left by an earlier rebuild: {drop}");
        let stmt = std::ffi::CString::new(drop.as_str())
            .unwrap_or_else(|_| pgrx::error!("pgflow: bad index name"));
        unsafe { run_top_level(&stmt) };
    }
    let started = now();
    unsafe { run_top_level(reindex_sql) };
    let secs = (now() - started) as f64 / 1e6;
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };

    let after = as_owner(c"pgflow: index rebuild, size", || {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT pg_catalog.pg_indexes_size(pg_catalog.to_regclass($1))",
                    Some(1),
                    &[table.into()],
                )?
                .first()
                .get::<i64>(1)
        })
        .ok()
        .flatten()
    })
    .flatten()
    .unwrap_or(0);
    pgrx::log!(
        "pgflow: rebuilt the indexes of {table} concurrently in {secs:.1} s: {:.2} MB -> {:.2} MB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    let mut reg = REGISTRY.exclusive();
    if let Some(slot) = reg.find(dboid) {
        let t = now();
        slot.reindex_before = before;
        slot.reindex_ended_at = t;
        slot.reindex_failed = false;
        slot.reindexes += 1;
        slot.reindex_next_check = t + super::micros(super::REINDEX_AFTER);
    }
}
