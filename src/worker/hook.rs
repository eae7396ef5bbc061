//! A ProcessUtility hook that keeps the workers out of the way of database-level commands.
//!
//! `DROP DATABASE`, `CREATE DATABASE ... TEMPLATE d`, `ALTER DATABASE d RENAME` and
//! `ALTER DATABASE d SET TABLESPACE` fail while another session is connected to `d`, and a
//! worker is such a session. Before such a command runs, the hook marks `d`'s slot held, stops its
//! worker and waits (at most 10 s, cancellable) for it to exit. When the command's transaction
//! ends, the hold is released: after a commit of DROP DATABASE the launcher finds the database
//! gone and frees the slot; otherwise it starts the worker again.
//!
//! `DROP EXTENSION pgflow`, `DROP SCHEMA pgflow` and `DROP DATABASE` also wake the long-poll
//! readers of their database for good first (`ipc::waiters::release_database`): a reader
//! returns what it has instead of holding its locks, or its session, until its wait runs out.
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::{SlotState, REGISTRY};

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// How long the hook waits for a worker to exit before letting the command run anyway (it then
/// fails with Postgres's own "database is being accessed by other users").
const STOP_WAIT_MS: i64 = 10_000;

pub fn install() {
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

unsafe fn defelem_value(options: *mut pg_sys::List, name: &CStr) -> Option<String> {
    if options.is_null() {
        return None;
    }
    unsafe {
        for i in 0..(*options).length as usize {
            let def = (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
            if CStr::from_ptr((*def).defname) == name && !(*def).arg.is_null() {
                let v = pg_sys::defGetString(def);
                return Some(CStr::from_ptr(v).to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// The database a utility statement needs free of other sessions, if any.
unsafe fn database_needed_alone(node: *mut pg_sys::Node) -> Option<String> {
    if node.is_null() {
        return None;
    }
    let cstr =
        |p: *const std::ffi::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                Some(cstr((*(node as *mut pg_sys::DropdbStmt)).dbname))
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                defelem_value((*(node as *mut pg_sys::CreatedbStmt)).options, c"template")
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let stmt = node as *mut pg_sys::RenameStmt;
                ((*stmt).renameType == pg_sys::ObjectType::OBJECT_DATABASE
                    && !(*stmt).subname.is_null())
                .then(|| cstr((*stmt).subname))
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let stmt = node as *mut pg_sys::AlterDatabaseStmt;
                defelem_value((*stmt).options, c"tablespace").map(|_| cstr((*stmt).dbname))
            }
            _ => None,
        }
    }
}

thread_local! {
    /// Databases this transaction holds the worker of (`hold`): released at its end.
    static HELD: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The transaction's end, committed or not (an end hook of `ipc::xact`): its holds are
/// released. Takes the list without allocating or panicking.
fn release_held(_committed: bool) {
    let held = HELD
        .try_with(|h| h.try_borrow_mut().ok().map(|mut h| std::mem::take(&mut *h)))
        .ok()
        .flatten()
        .unwrap_or_default();
    for dboid in held {
        release(dboid);
    }
}

fn release(dboid: u32) {
    let launcher = {
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.find(dboid) {
            slot.held = false;
        }
        reg.launcher_latch
    };
    crate::ipc::set_latch(launcher);
}

/// Holds `dbname`'s worker: stops it and waits until it has exited.
fn hold(dbname: &str) {
    let Ok(cname) = std::ffi::CString::new(dbname) else {
        return;
    };
    let oid = unsafe { pg_sys::get_database_oid(cname.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        return;
    }
    let dboid = oid.to_u32();
    let me = crate::ipc::my_latch();
    let pid = {
        let mut reg = REGISTRY.exclusive();
        let Some(slot) = reg.find(dboid) else { return };
        slot.held = true;
        slot.waiter_latch = me;
        if matches!(slot.state, SlotState::Running | SlotState::Starting) {
            slot.set_state(SlotState::Stopping);
        }
        slot.pid
    };
    crate::ipc::xact::add_end_hook(release_held);
    HELD.with(|h| h.borrow_mut().push(dboid));
    if pid > 0 {
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = super::now() + STOP_WAIT_MS * 1000;
    loop {
        let done = {
            let mut reg = REGISTRY.exclusive();
            match reg.find(dboid) {
                None => true,
                Some(slot) => {
                    slot.waiter_latch = me;
                    slot.pid == 0
                        && !matches!(slot.state, SlotState::Starting | SlotState::Stopping)
                }
            }
        };
        let left_ms = (deadline - super::now()) / 1000;
        if done || left_ms <= 0 {
            break;
        }
        unsafe {
            if pg_sys::InterruptPending != 0 {
                pg_sys::ProcessInterrupts();
            }
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left_ms.min(100) as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

/// The database whose long-poll readers must stop waiting before a statement runs:
/// `DROP EXTENSION pgflow` and `DROP SCHEMA pgflow` (this database; their locks wait for every
/// reader's), `DROP DATABASE d` (d's readers, whose sessions it waits for).
unsafe fn database_of_waiters_to_release(node: *mut pg_sys::Node) -> Option<pg_sys::Oid> {
    if node.is_null() {
        return None;
    }
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let name = (*(node as *mut pg_sys::DropdbStmt)).dbname;
                let oid = pg_sys::get_database_oid(name, true);
                (oid != pg_sys::InvalidOid).then_some(oid)
            }
            pg_sys::NodeTag::T_DropStmt => {
                let stmt = node as *mut pg_sys::DropStmt;
                let kind = (*stmt).removeType;
                if kind != pg_sys::ObjectType::OBJECT_EXTENSION
                    && kind != pg_sys::ObjectType::OBJECT_SCHEMA
                {
                    return None;
                }
                let objects = (*stmt).objects;
                if objects.is_null() {
                    return None;
                }
                let names_pgflow = (0..(*objects).length as usize).any(|i| {
                    let n = (*(*objects).elements.add(i)).ptr_value as *mut pg_sys::Node;
                    !n.is_null()
                        && (*n).type_ == pg_sys::NodeTag::T_String
                        && CStr::from_ptr((*(n as *mut pg_sys::String)).sval) == c"pgflow"
                });
                names_pgflow.then_some(pg_sys::MyDatabaseId)
            }
            _ => None,
        }
    }
}

/// `f` of the catalog row with key `oid` in a syscache (`T` is that catalog's row struct), or
/// None when there is no such row.
unsafe fn catalog_row<T, R>(
    cache: pg_sys::SysCacheIdentifier::Type,
    oid: pg_sys::Oid,
    f: impl FnOnce(&T) -> R,
) -> Option<R> {
    unsafe {
        let tup = pg_sys::SearchSysCache1(cache as i32, pg_sys::Datum::from(oid));
        if tup.is_null() {
            return None;
        }
        let r = f(&*pg_sys::heap_tuple_get_struct::<T>(tup));
        pg_sys::ReleaseSysCache(tup);
        Some(r)
    }
}

/// Whether the current user may run the command at all: the hook acts (stops a worker, wakes
/// long-poll readers, drops statistics) only for a command Postgres would allow, so that a role
/// with no privilege cannot disturb another database's worker by repeating a command that
/// fails with 42501 (issue #34). The rules are Postgres's own for each statement: the owner of
/// the database, extension or schema (superusers own everything); CREATEDB for CREATE DATABASE
/// and a rename, and a template the role owns or that is marked datistemplate.
unsafe fn allowed(node: *mut pg_sys::Node) -> bool {
    unsafe {
        let user = pg_sys::GetUserId();
        let owns = |class: pg_sys::Oid, oid: pg_sys::Oid| -> bool {
            #[cfg(feature = "pg15")]
            {
                match class {
                    pg_sys::DatabaseRelationId => pg_sys::pg_database_ownercheck(oid, user),
                    pg_sys::ExtensionRelationId => pg_sys::pg_extension_ownercheck(oid, user),
                    _ => pg_sys::pg_namespace_ownercheck(oid, user),
                }
            }
            #[cfg(not(feature = "pg15"))]
            {
                pg_sys::object_ownercheck(class, oid, user)
            }
        };
        let createdb = || {
            catalog_row(
                pg_sys::SysCacheIdentifier::AUTHOID,
                user,
                |r: &pg_sys::FormData_pg_authid| r.rolsuper || r.rolcreatedb,
            )
            .unwrap_or(false)
        };
        let database = |name: *const std::ffi::c_char| pg_sys::get_database_oid(name, true);
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let oid = database((*(node as *mut pg_sys::DropdbStmt)).dbname);
                oid != pg_sys::InvalidOid && owns(pg_sys::DatabaseRelationId, oid)
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let Some(template) =
                    defelem_value((*(node as *mut pg_sys::CreatedbStmt)).options, c"template")
                else {
                    return false;
                };
                let Ok(template) = std::ffi::CString::new(template) else {
                    return false;
                };
                let oid = database(template.as_ptr());
                if oid == pg_sys::InvalidOid || !createdb() {
                    return false;
                }
                if owns(pg_sys::DatabaseRelationId, oid) {
                    return true;
                }
                catalog_row(
                    pg_sys::SysCacheIdentifier::DATABASEOID,
                    oid,
                    |r: &pg_sys::FormData_pg_database| r.datistemplate,
                )
                .unwrap_or(false)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let stmt = node as *mut pg_sys::RenameStmt;
                let oid = database((*stmt).subname);
                oid != pg_sys::InvalidOid && owns(pg_sys::DatabaseRelationId, oid) && createdb()
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let oid = database((*(node as *mut pg_sys::AlterDatabaseStmt)).dbname);
                oid != pg_sys::InvalidOid && owns(pg_sys::DatabaseRelationId, oid)
            }
            pg_sys::NodeTag::T_DropStmt => {
                let stmt = node as *mut pg_sys::DropStmt;
                if (*stmt).removeType == pg_sys::ObjectType::OBJECT_EXTENSION {
                    let oid = pg_sys::get_extension_oid(c"pgflow".as_ptr(), true);
                    oid != pg_sys::InvalidOid && owns(pg_sys::ExtensionRelationId, oid)
                } else {
                    let oid = pg_sys::get_namespace_oid(c"pgflow".as_ptr(), true);
                    oid != pg_sys::InvalidOid && owns(pg_sys::NamespaceRelationId, oid)
                }
            }
            _ => false,
        }
    }
}

/// `COMMIT PREPARED` and `ROLLBACK PREPARED`: the prepared transaction's sends (or its claims'
/// release) reach readers now, in this session, where no callback of that transaction runs;
/// so its commit wakes the database's readers (`ipc::xact`). Before, a long-poll read waited
/// out its whole wait (issue #30).
unsafe fn ends_prepared(node: *mut pg_sys::Node) -> bool {
    unsafe {
        (*node).type_ == pg_sys::NodeTag::T_TransactionStmt && {
            let kind = (*(node as *mut pg_sys::TransactionStmt)).kind;
            kind == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED
                || kind == pg_sys::TransactionStmtKind::TRANS_STMT_ROLLBACK_PREPARED
        }
    }
}

/// The hook's own work before a statement runs. Its errors (a cancel while it waits for a
/// worker to exit) are reported by the guard as usual.
#[pg_guard]
unsafe extern "C-unwind" fn before(stmt: *mut pg_sys::Node) {
    if !crate::ipc::preloaded() || stmt.is_null() {
        return;
    }
    if unsafe { ends_prepared(stmt) } {
        crate::ipc::xact::wake_database_at_commit();
        return;
    }
    let waiters = unsafe { database_of_waiters_to_release(stmt) };
    let alone = unsafe { database_needed_alone(stmt) };
    if (waiters.is_none() && alone.is_none()) || !unsafe { allowed(stmt) } {
        return;
    }
    if waiters == Some(unsafe { pg_sys::MyDatabaseId }) {
        refuse_drop_with_links();
    }
    if let Some(dboid) = waiters {
        crate::ipc::waiters::release_database(dboid.to_u32());
        // Its queues' statistics and claim cursors go with it, if the command commits (the
        // launcher's sweep is the backstop; a test setting leaves them to it).
        let other = dboid != unsafe { pg_sys::MyDatabaseId };
        if !(other && crate::guc::TEST_KEEP_DROPPED.get()) {
            crate::ipc::stats::drop_database_entries(dboid.to_u32());
            crate::ipc::cursor::drop_database_entries(dboid.to_u32());
            crate::ipc::notify::forget_database(dboid.to_u32());
        }
    }
    if let Some(dbname) = alone {
        hold(&dbname);
    }
}

/// `DROP EXTENSION pgflow` and `DROP SCHEMA pgflow` in a database with links (sql/links.sql)
/// are refused with 55006: the outbox would go with them, and with it every message not yet
/// at its remote site, while the publications and the remote's replication slots stayed
/// behind. The links are dropped first (`pgflow.link_drop` refuses while messages wait).
fn refuse_drop_with_links() {
    let owner = unsafe { pg_sys::get_role_oid(c"pgflow_owner".as_ptr(), true) };
    if owner == pg_sys::InvalidOid {
        return;
    }
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: the owner reads its own table; the previous user is restored on the normal path,
    // and an error aborts the transaction, which restores it.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let links = Spi::get_one::<i64>(
        "SELECT CASE WHEN pg_catalog.to_regclass('pgflow.link') IS NULL THEN 0 \
                ELSE (SELECT pg_catalog.count(*) FROM pgflow.link) END",
    );
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    match links {
        Ok(Some(n)) if n > 0 => {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!("pgflow has {n} link(s) to other sites in this database"),
                "Drop them first with pgflow.link_drop(), which waits until the remote sites \
                 hold every message: the outbox would go with the extension."
            );
        }
        Ok(_) => {}
        // Fail closed: a drop that could lose the outbox is not let through unchecked.
        Err(e) => {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("pgflow could not check this database for links to other sites: {e}"),
                "The drop is refused until the check can run."
            );
        }
    }
}

/// Whether a statement is `CREATE SCHEMA pgflow` (plain: no AUTHORIZATION, no elements, no IF
/// NOT EXISTS) in a database where pgflow is created and pgflow_owner owns schema pgflow: what
/// `pg_restore`
/// of a pgflow database runs first. The schema is not a member of the extension (Postgres makes
/// a control file's schema before the script and refuses to add an extension's own schema to
/// it), so a dump creates it, and a restore into a database where `CREATE EXTENSION pgflow`
/// already ran failed there and exited 1 (issue #34). The hook runs such a statement as
/// `CREATE SCHEMA IF NOT EXISTS pgflow`: Postgres still checks the CREATE privilege on the
/// database first, and says "already exists, skipping".
unsafe fn restoring_pgflow_schema(node: *mut pg_sys::Node) -> bool {
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_CreateSchemaStmt {
            return false;
        }
        let stmt = node as *mut pg_sys::CreateSchemaStmt;
        if (*stmt).if_not_exists
            || !(*stmt).authrole.is_null()
            || !(*stmt).schemaElts.is_null()
            || (*stmt).schemaname.is_null()
            || CStr::from_ptr((*stmt).schemaname) != c"pgflow"
        {
            return false;
        }
        let nsp = pg_sys::get_namespace_oid(c"pgflow".as_ptr(), true);
        let owner = pg_sys::get_role_oid(c"pgflow_owner".as_ptr(), true);
        if pg_sys::get_extension_oid(c"pgflow".as_ptr(), true) == pg_sys::InvalidOid
            || nsp == pg_sys::InvalidOid
            || owner == pg_sys::InvalidOid
        {
            return false;
        }
        catalog_row(
            pg_sys::SysCacheIdentifier::NAMESPACEOID,
            nsp,
            |r: &pg_sys::FormData_pg_namespace| r.nspowner == owner,
        )
        .unwrap_or(false)
    }
}

/// `restoring_pgflow_schema`'s statement as `CREATE SCHEMA IF NOT EXISTS pgflow`, in a copy
/// (the tree Postgres passes may be read-only).
#[pg_guard]
unsafe extern "C-unwind" fn if_not_exists(
    pstmt: *mut pg_sys::PlannedStmt,
) -> *mut pg_sys::PlannedStmt {
    unsafe {
        let copy =
            pg_sys::copyObjectImpl(pstmt as *const std::ffi::c_void) as *mut pg_sys::PlannedStmt;
        (*((*copy).utilityStmt as *mut pg_sys::CreateSchemaStmt)).if_not_exists = true;
        copy
    }
}

unsafe extern "C-unwind" {
    /// Postgres's own `standard_ProcessUtility`, called without pgrx's FFI guard (see
    /// `process_utility`).
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The hook. Deliberately without `#[pg_guard]` and without any value that has a destructor:
/// an ERROR raised by the statement (any DDL in the cluster) must reach Postgres's own handler
/// untouched. pgrx's guard would catch it, keep only its message, detail, hint and SQLSTATE, and
/// raise it again: the schema, table, column, constraint and statement position were lost, and
/// with RUST_BACKTRACE set the DETAIL gained a Rust backtrace (issue #34). Postgres unwinds by
/// longjmp through this frame, which holds nothing to drop (a "plain old frame"); the hook's
/// own work is in `before`, which has its guard.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the planned utility statement Postgres hands every hook; the previous
    // hook (or Postgres's own function) takes the same arguments.
    unsafe {
        before((*pstmt).utilityStmt);
        let pstmt = if crate::ipc::preloaded() && restoring_pgflow_schema((*pstmt).utilityStmt) {
            if_not_exists(pstmt)
        } else {
            pstmt
        };
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}
