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
use pgrx::{register_xact_callback, PgXactCallbackEvent};

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
    register_xact_callback(PgXactCallbackEvent::Commit, move || release(dboid));
    register_xact_callback(PgXactCallbackEvent::Abort, move || release(dboid));
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

#[pg_guard]
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
    if crate::ipc::preloaded() {
        if let Some(dboid) = unsafe { database_of_waiters_to_release((*pstmt).utilityStmt) } {
            crate::ipc::waiters::release_database(dboid.to_u32());
            // Its queues' statistics go with it, if the command commits.
            crate::ipc::stats::drop_database_entries(dboid.to_u32());
        }
        if let Some(dbname) = unsafe { database_needed_alone((*pstmt).utilityStmt) } {
            hold(&dbname);
        }
    }
    unsafe {
        match PREV_PROCESS_UTILITY {
            Some(prev) => pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                prev(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                )
            }),
            None => pg_sys::standard_ProcessUtility(
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
