//! Who is calling: the role model's checks (docs/operations.md, "Roles and grants").
//!
//! Every user-facing function is `SECURITY DEFINER` (owned by `pgflow_owner`, a role with no
//! other power), so inside it `current_user` is the owner. The caller is the role the session
//! runs as, `SET ROLE` included: Postgres's outer user id, which a security-definer call does
//! not change.
//!
//! One case has no caller that pgflow can name: a security-restricted operation. ANALYZE,
//! VACUUM, CREATE INDEX, REINDEX, CLUSTER and REFRESH MATERIALIZED VIEW evaluate a table's
//! index expressions (and a view's query) as the table's owner, while the outer user stays the
//! session's: a superuser's ANALYZE (or autovacuum) of a table whose owner put `pgflow.send` in
//! an index expression would otherwise act with the superuser's pgflow rights. The owner's id
//! is gone once pgflow's own security-definer call has switched to `pgflow_owner`, so pgflow
//! refuses every call there with 42501 (issue #34).
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// What the calling role may do on every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Only what its per-queue grants say.
    Grants = 0,
    /// A member of pg_monitor: sees every queue's figures, but no message.
    Monitor = 1,
    /// A superuser or a member of pgflow_admin: everything.
    Admin = 2,
}

fn role(name: &std::ffi::CStr) -> pg_sys::Oid {
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

/// The calling role (outside any security-definer function), or 42501 inside a
/// security-restricted operation (the module's header says why).
pub fn caller() -> Result<pg_sys::Oid, ErrorReport> {
    // SAFETY: both read backend-local state.
    if unsafe { pg_sys::InSecurityRestrictedOperation() } && !arriving() {
        return Err(restricted());
    }
    Ok(unsafe { pg_sys::GetOuterUserId() })
}

thread_local! {
    /// The timeline this session has checked pgflow's ids against (0: none yet).
    static TIMELINE_CHECKED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Before this session's first pgflow write on a timeline: the id sequences are brought past
/// what earlier timelines may have issued (`pgflow._ids_for_timeline`, sql/links.sql), so that a
/// promoted standby never gives a lost message's id to another. A library newer than the
/// installed extension (before ALTER EXTENSION UPDATE) finds no such function and skips it.
fn ids_past_timeline() {
    // SAFETY: reads shared memory; recovery has ended (primary() checked).
    let tli = unsafe { pg_sys::GetWALInsertionTimeLine() };
    // Timeline 1 has nothing before it (_ids_for_timeline does nothing there): no SPI for a
    // new session's first write.
    if tli <= 1 || TIMELINE_CHECKED.with(|c| c.get()) == tli {
        return;
    }
    let exists = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('pgflow._ids_for_timeline(integer)') IS NOT NULL",
    );
    if let Ok(Some(true)) = exists {
        let tli_arg = i32::try_from(tli).unwrap_or(i32::MAX);
        if let Err(e) = Spi::run_with_args("SELECT pgflow._ids_for_timeline($1)", &[tli_arg.into()])
        {
            pgrx::error!("pgflow: could not move the id sequences past timeline {tli}: {e}");
        }
    }
    TIMELINE_CHECKED.with(|c| c.set(tli));
}

thread_local! {
    /// Set by `_arriving(true)` around link_arrive's send (sql/links.sql).
    static ARRIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this is link_arrive's send in a subscription's apply. On 16 and later the apply
/// runs a table's triggers as the table's owner (pgflow_owner) in a security-restricted
/// operation, since that owner may not SET ROLE to the subscription's owner; the outer user is
/// then the subscription's owner, whose rights the send must have. Only there is the caller
/// known in a restricted operation: the flag is pgflow's own (set around one send), the session
/// applies replicated changes (a replication origin is set up, which takes a superuser or the
/// apply worker), and session_replication_role = replica (superuser-only) is in effect.
fn arriving() -> bool {
    // SAFETY: backend-local globals.
    ARRIVING.with(|a| a.get())
        && unsafe {
            pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32
                && pg_sys::replorigin_session_origin != 0
        }
}

/// link_arrive's marker around its send: see `arriving`. Cleared again by the trigger (also in
/// its exception handler), and at the end of the transaction whatever happens.
#[pg_extern(volatile, parallel_unsafe)]
fn _arriving(on: bool) {
    ARRIVING.with(|a| a.set(on));
    if on {
        crate::ipc::xact::add_end_hook(end_arrival);
    }
}

/// An end hook of `ipc::xact`: the marker never outlives its transaction.
fn end_arrival(_committed: bool) {
    let _ = ARRIVING.try_with(|a| a.set(false));
}

fn restricted() -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "pgflow cannot be called from a security-restricted operation",
        "pgflow",
    )
    .set_detail(
        "An index expression, a materialized view or a function run by ANALYZE, VACUUM, \
         CREATE INDEX, REINDEX, CLUSTER or REFRESH MATERIALIZED VIEW runs as the table's owner \
         while the session's role stays in effect: pgflow cannot tell whose rights apply.",
    )
    .set_hint("Call pgflow from the statement itself, not from an index expression or a view.")
}

fn member_of(user: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    let r = role(name);
    r != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(user, r) }
}

thread_local! {
    /// The last caller's class, until a role or a membership changes (the syscache
    /// invalidations below): every verb asks, and the answer rarely changes.
    static CACHED: std::cell::Cell<Option<(pg_sys::Oid, Class)>> = const { std::cell::Cell::new(None) };
    static WATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    CACHED.with(|c| c.set(None));
}

/// The caller's class; a security-restricted operation's is `Grants` (and its `_caller()`
/// refuses, so no per-queue grant can apply either).
pub fn class() -> Class {
    let Ok(user) = caller() else {
        return Class::Grants;
    };
    if let Some((u, c)) = CACHED.with(|c| c.get()) {
        if u == user {
            return c;
        }
    }
    if !WATCHING.with(|w| w.replace(true)) {
        // ALTER ROLE (superuser, rename, drop) and GRANT/REVOKE of memberships.
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
        ] {
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    cache as i32,
                    Some(forget),
                    pg_sys::Datum::from(0),
                )
            };
        }
    }
    let c = if unsafe { pg_sys::superuser_arg(user) } || member_of(user, c"pgflow_admin") {
        Class::Admin
    } else if member_of(user, c"pg_monitor") {
        Class::Monitor
    } else {
        Class::Grants
    };
    CACHED.with(|cell| cell.set(Some((user, c))));
    c
}

/// The calling role (for the per-queue grant check).
#[pg_extern(stable, parallel_safe)]
fn _caller() -> Result<pg_sys::Oid, ErrorReport> {
    caller()
}

/// Whether the caller may see the query of a backend that runs as `role`, by
/// `pg_stat_activity`'s own rule: a member of pg_read_all_stats (pg_monitor is one), or a role
/// with the privileges of that backend's role. `horizon()` runs as pgflow_owner, which reads
/// every backend's row: without this, a pgflow_admin member read other users' query text there
/// (issue #34).
#[pg_extern(stable, strict, parallel_safe)]
fn _sees_activity_of(role: pg_sys::Oid) -> bool {
    let Ok(user) = caller() else { return false };
    // SAFETY: catalog lookups of role memberships.
    let direct = unsafe { pg_sys::superuser_arg(user) || pg_sys::has_privs_of_role(user, role) };
    direct || member_of(user, c"pg_read_all_stats")
}

/// 2 when the caller may do everything (a superuser, or a member of pgflow_admin), 1 when it
/// may see every queue's figures (a member of pg_monitor), else 0: its grants decide.
///
/// `writes`: the verb asking writes, so it is refused on a hot standby here (see `_primary`):
/// the check costs the verbs no call of their own. The read-only verbs (metrics,
/// list_pending, dlq_list, ...) work on a standby.
#[pg_extern(stable, parallel_safe)]
fn _caller_class(writes: default!(bool, false)) -> Result<i32, ErrorReport> {
    caller()?;
    if writes {
        primary()?;
    }
    Ok(class() as i32)
}

/// Refuses a writing verb on a hot standby with SQLSTATE 25006 and a message that says where
/// to go, before the verb gets as far as its first write (whose own error names only the
/// statement) or, for a long-poll `read`, starts to wait.
pub fn primary() -> Result<(), ErrorReport> {
    // SAFETY: reads shared memory (and, once recovery has ended, a backend-local flag).
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "this server is a standby in recovery: pgflow's writing calls run only on the primary",
            "pgflow",
        )
        .set_hint(
            "Connect to the primary (a multi-host connection string with \
             target_session_attrs=read-write finds it). On a standby, metrics(), list_queues(), \
             list_pending(), dlq_list() and the other read-only calls work.",
        ));
    }
    // SAFETY: a backend-local flag of the current transaction.
    if unsafe { pg_sys::XactReadOnly } {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "this transaction is read-only: pgflow's writing calls need a read-write transaction",
            "pgflow",
        )
        .set_hint(
            "default_transaction_read_only is on for this session (a failover manager such as \
             pg_auto_failover sets it on a promoted standby until the old primary is known to \
             be down: retry, or connect with target_session_attrs=read-write), or the \
             transaction was begun READ ONLY.",
        ));
    }
    ids_past_timeline();
    Ok(())
}

/// `primary()` for the verbs that reach no `_queue` lookup (create_queue, publish, maintain
/// and its jobs).
#[pg_extern(stable, parallel_safe)]
fn _primary() -> Result<(), ErrorReport> {
    primary()
}

/// A session's key for a session lease (a queue with `session_leases`): its backend's pid in
/// the high 32 bits and its start time in whole Unix seconds (low 32 bits), so that a pid the
/// system gives to a later backend is another key.
fn session_key(pid: i32, start: pg_sys::TimestampTz) -> i64 {
    // Postgres's own conversion (timestamptz_to_time_t): microseconds since 2000-01-01.
    let unix_secs = start / 1_000_000 + 946_684_800;
    (i64::from(pid) << 32) | (unix_secs & 0xffff_ffff)
}

/// This session's key, which a claim in a queue with `session_leases` records.
#[pg_extern(stable, parallel_safe)]
fn _session_key() -> i64 {
    // SAFETY: set once when the backend starts, read-only after.
    let (pid, start) = unsafe { (pg_sys::MyProcPid, pg_sys::MyStartTimestamp) };
    session_key(pid, start)
}

/// The key of another session, from `pg_stat_activity`'s `pid` and `backend_start`
/// (`pgflow._release_orphans`, to tell which holders still run).
#[pg_extern(immutable, strict, parallel_safe)]
fn _session_key_of(pid: i32, backend_start: TimestampWithTimeZone) -> i64 {
    session_key(pid, backend_start.into())
}
