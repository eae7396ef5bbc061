//! The SQL face of the per-queue statistics (`ipc::stats`): the row trigger that notes every
//! change, the shims `metrics()`, the rebuild and `stats_reset()` call, and `metrics_text()`.
use pgrx::datum::UnboxDatum;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgRelation, PgSqlErrorCode, PgTriggerError, PgTupleDesc, WhoAllocated};

use crate::ipc::stats::{self, Counted, Mode};

/// Which table a trigger sits on (its argument), and where its columns are.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Table {
    Message,
    Archive,
    Dead,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Message => "message",
            Table::Archive => "archive",
            Table::Dead => "dead",
        }
    }
}

/// The attribute numbers of the columns the trigger reads in one table (0: not read there),
/// found by name in the table's descriptor (`Cols::of`).
#[derive(Copy, Clone, Default, Debug, PartialEq, Eq)]
struct Cols {
    queue_id: i32,
    read_ct: i32,
    msg_id: i32,
    enqueued_at: i32,
    /// `message` only.
    state: i32,
    message: i32,
    headers: i32,
    errors: i32,
    /// `archive` only.
    archived_at: i32,
}

/// The columns the trigger reads, by name, with their types and the tables they are read in
/// (sql/schema.sql).
const COLUMNS: [(&str, pg_sys::Oid, &[Table]); 9] = [
    (
        "queue_id",
        pg_sys::INT4OID,
        &[Table::Message, Table::Archive, Table::Dead],
    ),
    (
        "read_ct",
        pg_sys::INT4OID,
        &[Table::Message, Table::Archive, Table::Dead],
    ),
    (
        "msg_id",
        pg_sys::INT8OID,
        &[Table::Message, Table::Archive, Table::Dead],
    ),
    (
        "enqueued_at",
        pg_sys::TIMESTAMPTZOID,
        &[Table::Message, Table::Archive, Table::Dead],
    ),
    ("state", pg_sys::CHAROID, &[Table::Message]),
    ("message", pg_sys::JSONBOID, &[Table::Message]),
    ("headers", pg_sys::JSONBOID, &[Table::Message]),
    ("errors", pg_sys::JSONBOID, &[Table::Message]),
    ("archived_at", pg_sys::TIMESTAMPTZOID, &[Table::Archive]),
];

impl Cols {
    /// Finds every column `table`'s trigger reads in `desc` by name, and checks its type: a
    /// table that lacks one, or has it with another type, gets 55000 rather than numbers read
    /// from the wrong column (before 0.3.0 the numbers were constants).
    fn of(table: Table, desc: &PgTupleDesc) -> Result<Cols, ErrorReport> {
        let mut c = Cols::default();
        for (name, typ, tables) in COLUMNS {
            if !tables.contains(&table) {
                continue;
            }
            let found = desc
                .iter()
                .enumerate()
                .find(|(_, a)| !a.is_dropped() && a.name() == name);
            let attnum = match found {
                Some((i, a)) if a.type_oid().value() == typ => i as i32 + 1,
                _ => {
                    return Err(ErrorReport::new(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!(
                            "pgflow's statistics trigger for \"{}\" needs a column \"{name}\" of type {}",
                            table.name(),
                            type_name(typ)
                        ),
                        "pgflow",
                    ))
                }
            };
            match name {
                "queue_id" => c.queue_id = attnum,
                "read_ct" => c.read_ct = attnum,
                "msg_id" => c.msg_id = attnum,
                "enqueued_at" => c.enqueued_at = attnum,
                "state" => c.state = attnum,
                "message" => c.message = attnum,
                "headers" => c.headers = attnum,
                "errors" => c.errors = attnum,
                _ => c.archived_at = attnum,
            }
        }
        Ok(c)
    }
}

fn type_name(typ: pg_sys::Oid) -> &'static str {
    match typ {
        pg_sys::INT4OID => "integer",
        pg_sys::INT8OID => "bigint",
        pg_sys::TIMESTAMPTZOID => "timestamp with time zone",
        pg_sys::CHAROID => "\"char\"",
        _ => "jsonb",
    }
}

thread_local! {
    /// Each relation's columns, found at its trigger's first row in this backend; a relcache
    /// invalidation of the relation (ALTER TABLE, an extension update) forgets them.
    static COLS: std::cell::RefCell<Vec<(pg_sys::Oid, Cols)>> = const { std::cell::RefCell::new(Vec::new()) };
    static COLS_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_cols(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let _ = COLS.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.retain(|e| relid != pg_sys::InvalidOid && e.0 != relid);
        }
    });
}

/// The columns of the trigger's relation, from the cache or found now.
fn cols_of(table: Table, rel: &PgRelation) -> Result<Cols, ErrorReport> {
    let relid = rel.oid();
    if let Some(c) = COLS.with(|c| c.borrow().iter().find(|e| e.0 == relid).map(|e| e.1)) {
        return Ok(c);
    }
    if !COLS_CALLBACK.with(|r| r.replace(true)) {
        // SAFETY: registered once per backend; the callback touches only this thread-local.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget_cols), pg_sys::Datum::from(0)) };
    }
    let c = Cols::of(table, &rel.tuple_desc())?;
    COLS.with(|v| v.borrow_mut().push((relid, c)));
    Ok(c)
}

/// One column of a row, through pgrx's typed accessor (its type checked against `T`).
fn get<'t, T>(row: &'t PgHeapTuple<'_, impl WhoAllocated>, attnum: i32) -> Option<T>
where
    T: IntoDatum + FromDatum + UnboxDatum<As<'t> = T> + 't,
{
    let n = std::num::NonZeroUsize::new(usize::try_from(attnum).ok()?)?;
    row.get_by_index::<T>(n).ok().flatten()
}

fn ts(row: &PgHeapTuple<'_, impl WhoAllocated>, attnum: i32) -> Option<i64> {
    get::<TimestampWithTimeZone>(row, attnum).map(i64::from)
}

/// Deliveries this session made, (queue, message) to when, so that its archive of the message
/// can observe the processing time. Not transactional (a delivery rolled back leaves an entry
/// that its next delivery or archive replaces) and bounded: at `LEASED_MAX` entries (a session
/// that leases what others archive) it starts over.
const LEASED_MAX: usize = 65_536;
thread_local! {
    static LEASED: std::cell::RefCell<std::collections::HashMap<(i32, i64), i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The root container's kind of a jsonb datum: its first word after the varlena header
/// (`JsonbContainer.header`; a scalar is stored as a one-element array flagged scalar).
/// A value stored out of line or compressed is detoasted only as far as that word; a plain
/// one (what a send writes) is read in place. Unsafe on purpose: pgrx's safe `JsonB` would
/// parse the whole document of every row written.
unsafe fn jsonb_kind(d: pg_sys::Datum) -> &'static str {
    const JB_FSCALAR: u32 = 0x1000_0000;
    const JB_FOBJECT: u32 = 0x2000_0000;
    const JB_FARRAY: u32 = 0x4000_0000;
    unsafe {
        let raw: *mut pg_sys::varlena = d.cast_mut_ptr();
        let v = if pgrx::varlena::varatt_is_1b_e(raw) || pgrx::varlena::varatt_is_4b_c(raw) {
            pg_sys::pg_detoast_datum_slice(raw, 0, 4)
        } else {
            raw
        };
        let header = std::ptr::read_unaligned(pgrx::varlena::vardata_any(v) as *const u32);
        if header & JB_FOBJECT != 0 {
            "object"
        } else if header & JB_FSCALAR != 0 {
            "scalar"
        } else if header & JB_FARRAY != 0 {
            "array"
        } else {
            "unknown"
        }
    }
}

/// The invariants of a `pgflow.message` row, checked on every INSERT and UPDATE: a known
/// state, a read count that is not negative, a payload and headers that are JSON objects and
/// errors that are an array. They were CHECK constraints until 0.2.0; Postgres rebuilds a
/// table's CHECK expressions from their stored text for every statement that writes it, which
/// cost about 15% of a send's CPU (docs/design.md). Errors are 23514, as a CHECK's were; each
/// check has its case in pg_regress `hardening`.
fn check_message_row(
    row: &PgHeapTuple<'_, impl WhoAllocated>,
    raw: *mut pg_sys::HeapTupleData,
    desc: pg_sys::TupleDesc,
    c: &Cols,
) {
    // NULLs are left to the NOT NULL constraints, checked after BEFORE triggers.
    if let Some(state) = get::<i8>(row, c.state) {
        if !matches!(state as u8, b'r' | b'd' | b'l' | b'g') {
            violation(format!(
                "state must be 'r', 'd', 'l' or 'g', got {:?}",
                state as u8 as char
            ));
        }
    }
    if get::<i32>(row, c.read_ct).is_some_and(|n| n < 0) {
        violation("read_ct must not be negative".into());
    }
    for (n, name, want) in [
        (c.message, "message", "object"),
        (c.headers, "headers", "object"),
        (c.errors, "errors", "array"),
    ] {
        let mut isnull = false;
        // SAFETY: `raw` is `row`, with its relation's descriptor, as the trigger got them; `n`
        // was found in that descriptor as a jsonb column (`Cols::of`).
        unsafe {
            let d = pg_sys::heap_getattr(raw, n, desc, &mut isnull);
            if !isnull {
                let got = jsonb_kind(d);
                if got != want {
                    violation(format!("{name} must be a JSON {want}, got a JSON {got}"));
                }
            }
        }
    }
}

fn violation(what: String) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
        format!("new row for relation \"message\" violates an invariant: {what}"),
        "pgflow",
    )
    .report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

fn gauge_of(state: i8) -> Option<usize> {
    match state as u8 {
        b'r' => Some(stats::READY),
        b'd' => Some(stats::DELAYED),
        b'l' => Some(stats::IN_FLIGHT),
        b'g' => Some(stats::WAITING),
        _ => None,
    }
}

/// The row trigger on `message`, `archive` and `dead` (BEFORE, so it sees each row once, with
/// no after-trigger queue): notes the change in this transaction's statistics, applied at its
/// commit. Returns the row unchanged. Its columns are found by name (`cols_of`).
#[pg_trigger]
fn _stats_note<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    let td = trigger.trigger_data();
    let op = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let (insert, update) = (
        op == pg_sys::TRIGGER_EVENT_INSERT,
        op == pg_sys::TRIGGER_EVENT_UPDATE,
    );
    let ret = if insert || update {
        trigger.new()
    } else {
        trigger.old()
    };
    let tg = trigger.trigger();
    if tg.tgnargs < 1 {
        return Ok(ret);
    }
    // SAFETY: tgargs has tgnargs C strings. (`extra_args()` would allocate a Vec of Strings
    // for every row.)
    let table = match unsafe { std::ffi::CStr::from_ptr(*tg.tgargs) }.to_bytes() {
        b"message" => Table::Message,
        b"archive" => Table::Archive,
        b"dead" => Table::Dead,
        _ => return Ok(ret),
    };
    let c = cols_of(table, &trigger.relation()?).unwrap_or_else(|e| {
        e.report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return")
    });
    // The row the change is about: the new one for INSERT, the old one otherwise.
    let (Some(row), new) = (
        if insert { trigger.new() } else { trigger.old() },
        trigger.new(),
    ) else {
        return Ok(ret);
    };
    if table == Table::Message && (insert || update) {
        let checked = new.as_ref().unwrap_or(&row);
        let raw = if insert {
            td.tg_trigtuple
        } else {
            td.tg_newtuple
        };
        // SAFETY: the trigger's relation, as Postgres passed it.
        let desc = unsafe { (*td.tg_relation).rd_att };
        check_message_row(checked, raw, desc, &c);
    }
    if !stats::enabled() {
        return Ok(ret);
    }
    let Some(queue_id) = get::<i32>(&row, c.queue_id) else {
        return Ok(ret);
    };
    let state = |t: &PgHeapTuple<'_, _>| get::<i8>(t, c.state);
    let read_ct = |t: &PgHeapTuple<'_, _>| get::<i32>(t, c.read_ct);
    // An UPDATE that changes neither the state nor the read count (a heartbeat, set_vt on a
    // lease) counts nothing: no delta, so its commit takes no lock.
    if let (Table::Message, true, Some(n)) = (table, update, new.as_ref()) {
        if state(&row) == state(n) && read_ct(&row) == read_ct(n) {
            return Ok(ret);
        }
    }
    // The clock only for what needs it (a delivery): a send does not read it.
    let now = || unsafe { pg_sys::GetCurrentTimestamp() };
    let mode = stats::mode();
    stats::with_delta(queue_id, |d| match (table, insert, update) {
        (Table::Message, true, _) => {
            if let Some(g) = state(&row).and_then(gauge_of) {
                d.gauges[g] += 1;
            }
            d.events[if mode == Mode::Redrive {
                stats::REDRIVEN
            } else {
                stats::SENT
            }] += 1;
        }
        (Table::Message, false, true) => {
            let Some(n) = new.as_ref() else { return };
            let (so, sn) = (state(&row).unwrap_or(0), state(n).unwrap_or(0));
            if so != sn {
                if let Some(g) = gauge_of(so) {
                    d.gauges[g] -= 1;
                }
                if let Some(g) = gauge_of(sn) {
                    d.gauges[g] += 1;
                }
            }
            let (ro, rn) = (read_ct(&row).unwrap_or(0), read_ct(n).unwrap_or(0));
            if rn > ro {
                d.events[stats::DELIVERED] += i64::from(rn - ro);
                if let Some(id) = get::<i64>(&row, c.msg_id) {
                    LEASED.with(|l| {
                        let mut l = l.borrow_mut();
                        if l.len() >= LEASED_MAX {
                            l.clear();
                        }
                        l.insert((queue_id, id), now());
                    });
                }
                if ro == 0 {
                    if let Some(at) = ts(&row, c.enqueued_at) {
                        d.observe(stats::WAIT, now() - at);
                    }
                }
            } else if so as u8 == b'l' && sn as u8 == b'd' {
                // A lease given back with a failure (nack, or an expired lease) that will be
                // retried; set_vt keeps a lease 'l' or hands it back as 'r'.
                d.events[failure(mode)] += 1;
            }
        }
        (Table::Message, false, false) => {
            if let Some(g) = state(&row).and_then(gauge_of) {
                d.gauges[g] -= 1;
            }
            d.removed += 1;
            if mode == Mode::Pop {
                d.events[stats::DELIVERED] += 1;
                if read_ct(&row) == Some(0) {
                    if let Some(at) = ts(&row, c.enqueued_at) {
                        d.observe(stats::WAIT, now() - at);
                    }
                }
            }
        }
        (Table::Archive, true, _) => {
            d.gauges[stats::ARCHIVED_ROWS] += 1;
            d.events[stats::ARCHIVED] += 1;
            let (from, to) = (ts(&row, c.enqueued_at), ts(&row, c.archived_at));
            if let (Some(from), Some(to)) = (from, to) {
                d.observe(stats::END_TO_END, to - from);
            }
            if let (Some(id), Some(to)) = (get::<i64>(&row, c.msg_id), to) {
                if let Some(at) = LEASED.with(|l| l.borrow_mut().remove(&(queue_id, id))) {
                    d.observe(stats::PROCESSING, to - at);
                }
            }
        }
        (Table::Archive, false, false) => d.gauges[stats::ARCHIVED_ROWS] -= 1,
        (Table::Dead, true, _) => {
            d.gauges[stats::DEAD] += 1;
            d.events[stats::DEAD_LETTERED] += 1;
            d.events[failure(mode)] += 1;
        }
        (Table::Dead, false, false) => d.gauges[stats::DEAD] -= 1,
        // An UPDATE of an archived or dead row changes no statistic.
        (_, false, true) => {}
    });
    Ok(ret)
}

fn failure(mode: Mode) -> usize {
    if mode == Mode::Expire {
        stats::EXPIRED
    } else {
        stats::NACKED
    }
}

/// Says what the next row changes of this transaction mean: 'pop', 'expire', 'redrive', or
/// 'plain' to end it (a transaction's or subtransaction's end ends it too).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _stats_mode(mode: &str) -> Result<(), ErrorReport> {
    let m = match mode {
        "plain" => Mode::Plain,
        "pop" => Mode::Pop,
        "expire" => Mode::Expire,
        "redrive" => Mode::Redrive,
        _ => {
            return Err(ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown statistics mode \"{mode}\""),
                "pgflow",
            ))
        }
    };
    stats::set_mode(m);
    Ok(())
}

/// create_queue: the queue's statistics start empty at this transaction's commit.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _stats_created(queue_id: i32, queue_name: &str) {
    stats::created(queue_id, queue_name);
}

/// drop_queue: the queue's statistics go at this transaction's commit.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _stats_dropped(queue_id: i32) {
    stats::dropped(queue_id);
}

/// Loads counted gauges (`_stats_rebuild`, which holds the tables' SHARE lock); arrays by
/// position, gauges in `ipc::stats::GAUGES` order. Returns how many queues got an entry.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)] // one array per gauge, as SQL aggregates them
fn _stats_load(
    queue_ids: Vec<i32>,
    names: Vec<String>,
    ready: Vec<i64>,
    delayed: Vec<i64>,
    in_flight: Vec<i64>,
    waiting: Vec<i64>,
    dead: Vec<i64>,
    archived: Vec<i64>,
) -> i64 {
    let counted: Vec<Counted> = (0..queue_ids.len())
        .map(|i| {
            let g = |v: &Vec<i64>| v.get(i).copied().unwrap_or(0);
            Counted {
                queue_id: queue_ids[i],
                name: names.get(i).cloned().unwrap_or_default(),
                gauges: [
                    g(&ready),
                    g(&delayed),
                    g(&in_flight),
                    g(&waiting),
                    g(&dead),
                    g(&archived),
                ],
            }
        })
        .collect();
    stats::load(&counted)
}

/// Whether any of these queues' gauges need a rebuild (false without preload, or when
/// `pgflow.stats` is off).
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_needs_rebuild(queue_ids: Vec<i32>) -> bool {
    stats::enabled() && stats::needs_rebuild(&queue_ids)
}

/// The alerts now firing in this database, by position, for the endpoint: 0.2.0's call (its
/// `_alerts_check` runs until `ALTER EXTENSION pgflow UPDATE`), without values.
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_alerts(queue_ids: Vec<i32>, alerts: Vec<String>, since: Vec<TimestampWithTimeZone>) {
    let none = vec![None; queue_ids.len()];
    _stats_alerts_at(queue_ids, alerts, since, none.clone(), none);
}

/// The alerts now firing in this database (`_alerts_check`), with each one's value and
/// threshold, by position, for the endpoint and the status page.
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_alerts_at(
    queue_ids: Vec<i32>,
    alerts: Vec<String>,
    since: Vec<TimestampWithTimeZone>,
    values: Vec<Option<f64>>,
    thresholds: Vec<Option<f64>>,
) {
    let firing: Vec<stats::Firing> = queue_ids
        .iter()
        .zip(&alerts)
        .zip(&since)
        .zip(values.iter().zip(&thresholds))
        .filter_map(|(((&q, a), &t), (v, th))| {
            let kind = stats::ALERTS.iter().position(|k| k == a)?;
            Some(stats::Firing {
                queue_id: q,
                kind,
                since: pg_sys::TimestampTz::from(t),
                value: v.unwrap_or(f64::NAN),
                threshold: th.unwrap_or(f64::NAN),
            })
        })
        .collect();
    stats::set_alerts(&firing);
}

/// The oldest ready message's enqueue time per queue of this database (`_stats_tick`), by
/// position, for metrics() and the endpoint.
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_oldest(queue_ids: Vec<i32>, oldest: Vec<TimestampWithTimeZone>) {
    let pairs: Vec<(i32, i64)> = queue_ids
        .iter()
        .zip(&oldest)
        .map(|(&q, &t)| (q, pg_sys::TimestampTz::from(t)))
        .collect();
    stats::set_oldest(&pairs);
}

/// Whether the statistics are kept: the library preloaded and `pgflow.stats` on (as the
/// launcher last saw it; see `ipc::stats::sync_enabled`).
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_enabled() -> bool {
    stats::enabled()
}

/// Zeroes the counters and histograms of one queue (or all of this database's, for NULL).
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_reset(queue_id: Option<i32>) {
    stats::reset(queue_id);
}

/// The queues of this database with ready messages by the statistics (exact gauges only;
/// none without them), in one call: the worker's tick looks for their oldest ready message.
#[pg_extern(volatile, parallel_unsafe)]
fn _stats_ready() -> SetOfIterator<'static, i32> {
    let ids = if stats::enabled() {
        stats::ready_queues()
    } else {
        Vec::new()
    };
    SetOfIterator::new(ids)
}

/// One queue's statistics, for `metrics()`: no row when it has none (no preload, the table is
/// full, or `pgflow.stats` off); `valid` false when its gauges wait for a rebuild.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn _stats(
    queue_id: i32,
) -> TableIterator<
    'static,
    (
        name!(valid, bool),
        name!(ready, i64),
        name!(delayed, i64),
        name!(in_flight, i64),
        name!(waiting, i64),
        name!(dead, i64),
        name!(archived_rows, i64),
        name!(sent, i64),
        name!(delivered, i64),
        name!(archived, i64),
        name!(deleted, i64),
        name!(nacked, i64),
        name!(expired, i64),
        name!(dead_lettered, i64),
        name!(redriven, i64),
        name!(wait_p50, Option<f64>),
        name!(wait_p99, Option<f64>),
        name!(end_to_end_p50, Option<f64>),
        name!(end_to_end_p99, Option<f64>),
        name!(processing_p50, Option<f64>),
        name!(processing_p99, Option<f64>),
        name!(reset_at, Option<TimestampWithTimeZone>),
        name!(oldest_ready_at, Option<TimestampWithTimeZone>),
    ),
> {
    let rows = stats::get(queue_id).filter(|_| stats::enabled()).map(|e| {
        let g = e.gauges;
        let c = e.events.map(|v| v as i64);
        (
            e.valid,
            g[0],
            g[1],
            g[2],
            g[3],
            g[4],
            g[5],
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            c[7],
            crate::worker::exposition::quantile(&e.hist[stats::WAIT], 0.5),
            crate::worker::exposition::quantile(&e.hist[stats::WAIT], 0.99),
            crate::worker::exposition::quantile(&e.hist[stats::END_TO_END], 0.5),
            crate::worker::exposition::quantile(&e.hist[stats::END_TO_END], 0.99),
            crate::worker::exposition::quantile(&e.hist[stats::PROCESSING], 0.5),
            crate::worker::exposition::quantile(&e.hist[stats::PROCESSING], 0.99),
            TimestampWithTimeZone::try_from(e.reset_at).ok(),
            (e.oldest_ready != 0)
                .then(|| TimestampWithTimeZone::try_from(e.oldest_ready).ok())
                .flatten(),
        )
    });
    TableIterator::new(rows)
}

/// The Prometheus text of this database's queues among `queue_ids` (the ones the caller may
/// see), its worker and `horizon` (age in seconds and in transactions), as the endpoint
/// serves it.
#[pg_extern(volatile, parallel_unsafe)]
fn _metrics_text(
    queue_ids: Vec<i32>,
    horizon_age: Option<f64>,
    horizon_xmin_age: Option<i32>,
) -> Result<String, ErrorReport> {
    if !crate::ipc::preloaded() {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pgflow's statistics need pgflow in shared_preload_libraries",
            "pgflow",
        )
        .set_hint("Add pgflow to shared_preload_libraries and restart the server; until then metrics() counts rows."));
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let horizon = horizon_age.map(|a| (a, horizon_xmin_age.unwrap_or(0)));
    Ok(crate::worker::exposition::render(
        &|d| d == db,
        &|d, q| d == db && queue_ids.contains(&q),
        Some((db, horizon)),
    ))
}
