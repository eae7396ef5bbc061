//! The launcher: one static background worker per cluster ("pgflow launcher").
//!
//! Started by the postmaster once recovery has finished (so on a hot standby it waits, and starts
//! after promotion), restarted 5 s after an error. It connects to no database and reads
//! `pg_database` directly (a shared catalog), so it holds no connection that could block
//! `DROP DATABASE`. Each round it reconciles the slot table with the databases and the settings,
//! then sleeps until a database worker's start or exit, a `CREATE EXTENSION`, a reload, a due
//! restart, or the naptime wakes it.
use std::collections::HashMap;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
};
use pgrx::prelude::*;

use super::{
    handle_interrupts, micros, name_of, now, policy, setup_signals, IdleReason, SlotState,
    LAUNCHER_NAPTIME_MS, MAX_DATABASES, REGISTRY,
};
use crate::guc;

/// How long a registered worker may take to attach before the launcher, having lost track of
/// it (a launcher restart), registers it again.
const STARTING_TIMEOUT_MS: i64 = 60_000;

pub fn register() {
    BackgroundWorkerBuilder::new("pgflow launcher")
        .set_type("pgflow launcher")
        .set_library("pgflow")
        .set_function("pgflow_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

struct Database {
    oid: u32,
    name: String,
}

/// Connectable, non-template databases, read straight from pg_database; and the oids of every
/// database there.
fn scan_databases() -> (Vec<Database>, Vec<u32>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            all.push(form.oid.to_u32());
            // datconnlimit -2 marks a database whose DROP was interrupted (PG 16+).
            if form.datistemplate || !form.datallowconn || form.datconnlimit == -2 {
                continue;
            }
            out.push(Database {
                oid: form.oid.to_u32(),
                name: name_of(&form.datname),
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        pg_sys::CommitTransactionCommand();
    }
    (out, all)
}

/// Frees the shared-memory entries of databases that no longer exist (`ipc::sweep`). The
/// candidates are taken before `pg_database` is read, so a database created meanwhile, whose
/// entries came after, is never among them.
fn sweep(held: &[u32], all: &[u32]) {
    let gone: Vec<u32> = held.iter().copied().filter(|d| !all.contains(d)).collect();
    if gone.is_empty() {
        return;
    }
    let n = crate::ipc::sweep(&gone);
    if n > 0 {
        pgrx::log!(
            "pgflow: freed {n} shared-memory entries of {} databases that no longer exist (oids {gone:?})",
            gone.len()
        );
    }
}

fn start_worker(dboid: u32, name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pgflow worker for database {name}"))
        .set_type("pgflow worker")
        .set_library("pgflow")
        .set_function("pgflow_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None) // the launcher restarts it, with backoff
        .set_argument(Some(pg_sys::Datum::from(dboid)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// One round: bring the slots in line with the databases and the settings. Returns how long the
/// launcher may sleep before the next round is due.
fn reconcile(handles: &mut HashMap<u32, DynamicBackgroundWorker>) -> i64 {
    let held = crate::ipc::databases_with_entries();
    let (dbs, all) = scan_databases();
    sweep(&held, &all);
    let t = now();
    let enabled = guc::ENABLED.get();
    let mut to_start: Vec<(u32, String)> = Vec::new();
    let mut to_stop: Vec<i32> = Vec::new();
    let mut sleep_ms = LAUNCHER_NAPTIME_MS;
    {
        let mut reg = REGISTRY.exclusive();
        for db in &dbs {
            match reg.find(db.oid) {
                Some(slot) => {
                    if slot.name() != db.name {
                        slot.set_name(&db.name); // renamed
                    }
                }
                None => {
                    if reg.find_or_add(db.oid, &db.name).is_none() {
                        pgrx::warning!(
                            "pgflow: no worker for database \"{}\": more than {MAX_DATABASES} databases",
                            db.name
                        );
                    }
                }
            }
        }
        for slot in reg.slots.iter_mut() {
            if slot.state == SlotState::Free {
                continue;
            }
            let exists = dbs.iter().any(|d| d.oid == slot.dboid);
            if !exists && slot.pid == 0 && slot.state != SlotState::Starting {
                *slot = super::Slot::EMPTY; // the database is gone
                continue;
            }
            let allowed = enabled && exists && !slot.held && super::database_allowed(&slot.name());
            match slot.state {
                SlotState::Running | SlotState::Starting if !allowed => {
                    slot.set_state(SlotState::Stopping);
                    if slot.pid > 0 {
                        to_stop.push(slot.pid);
                    }
                }
                SlotState::Wanted if !allowed => slot.set_state(SlotState::Held),
                SlotState::Held if allowed => {
                    slot.set_state(SlotState::Wanted);
                    slot.not_before = 0;
                }
                SlotState::Starting
                    if slot.pid == 0
                        && !handles.contains_key(&slot.dboid)
                        && t - slot.state_since > STARTING_TIMEOUT_MS * 1000 =>
                {
                    slot.set_state(SlotState::Wanted);
                }
                _ => {}
            }
            if slot.state == SlotState::Wanted {
                if t >= slot.not_before {
                    slot.set_state(SlotState::Starting);
                    to_start.push((slot.dboid, slot.name()));
                } else {
                    sleep_ms = sleep_ms.min((slot.not_before - t) / 1000 + 1);
                }
            }
        }
    }
    for pid in to_stop {
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    for (dboid, name) in to_start {
        match start_worker(dboid, &name) {
            Some(h) => {
                handles.insert(dboid, h);
                if let Some(slot) = REGISTRY.exclusive().find(dboid) {
                    slot.no_bgw_slot_since = 0;
                }
            }
            None => {
                // Every background worker slot is taken. Tried again every 10 s; said once per
                // episode here, and all along by worker_status(), the endpoint and the page.
                let first = {
                    let mut reg = REGISTRY.exclusive();
                    match reg.find(dboid) {
                        Some(slot) => {
                            slot.set_state(SlotState::Wanted);
                            slot.not_before = now() + micros(Duration::from_secs(10));
                            let first = slot.no_bgw_slot_since == 0;
                            if first {
                                slot.no_bgw_slot_since = now();
                            }
                            first
                        }
                        None => false,
                    }
                };
                if first {
                    // SAFETY: a plain int setting of the postmaster's.
                    let max = unsafe { pg_sys::max_worker_processes };
                    pgrx::warning!(
                        "pgflow: no free background worker slot for database \"{name}\"'s worker \
                         (max_worker_processes = {max}): its leases, retries, alerts and \
                         statistics wait; raise max_worker_processes (docs/operations.md, \
                         Sizing)"
                    );
                }
                sleep_ms = sleep_ms.min(10_000);
            }
        }
    }
    // A registered worker that stopped before attaching (it could not connect, say) is due
    // for a restart with backoff; one that attached no longer needs its handle.
    handles.retain(|&dboid, h| {
        let status = h.pid();
        let mut reg = REGISTRY.exclusive();
        let Some(slot) = reg.find(dboid) else {
            return false;
        };
        match status {
            Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied) => {
                if slot.state == SlotState::Starting && slot.pid == 0 {
                    slot.failures += 1;
                    slot.restarts += 1;
                    let delay = policy::restart_delay(slot.failures as u32);
                    slot.not_before = now() + micros(delay);
                    slot.set_state(SlotState::Wanted);
                    sleep_ms = sleep_ms.min(delay.as_millis() as i64 + 1);
                } else if slot.state == SlotState::Stopping && slot.pid == 0 {
                    slot.set_state(SlotState::Held);
                }
                false
            }
            _ => slot.state == SlotState::Starting && slot.pid == 0,
        }
    });
    sleep_ms
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgflow_launcher_main(_arg: pg_sys::Datum) {
    setup_signals();
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0);
    }
    {
        let mut reg = REGISTRY.exclusive();
        reg.launcher_latch = crate::ipc::my_latch();
        // A previous launcher may have left slots that wait for a CREATE EXTENSION notice it
        // can no longer receive; look at every database again.
        for slot in reg.slots.iter_mut() {
            if slot.state == SlotState::Idle {
                slot.set_state(SlotState::Wanted);
                slot.not_before = 0;
            }
        }
    }
    crate::ipc::stats::sync_enabled();
    pgrx::log!("pgflow launcher started");
    let mut handles: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    loop {
        if handle_interrupts() {
            crate::ipc::stats::sync_enabled();
            // A reload may have re-enabled databases whose workers stopped by themselves
            // (ALTER DATABASE ... RESET pgflow.enabled): look at them again.
            let mut reg = REGISTRY.exclusive();
            for slot in reg.slots.iter_mut() {
                if slot.state == SlotState::Idle && slot.idle_reason == IdleReason::Disabled {
                    slot.set_state(SlotState::Wanted);
                    slot.not_before = 0;
                }
            }
        }
        let sleep_ms = reconcile(&mut handles);
        crate::ipc::sleep(sleep_ms);
    }
}
