//! The claim cursor and the due time: what lets a read go straight to the first deliverable
//! message, and skip the lease-expiry and promotion probes when nothing can be due, however
//! many dead index entries a held xmin horizon has left behind (docs/design.md, "Claim
//! cursor").
//!
//! Per queue, in shared memory:
//! - `mark`, a claim key (`-priority`, `msg_id`) such that every committed ready message has a
//!   key above it. A read scans the ready index from `mark` instead of from the queue's start,
//!   so it never walks the entries of the messages claimed before it.
//! - `due`, a time such that no committed leased or delayed message has `vt` before it. A read
//!   runs the expiry and promotion probes only once `due` has passed.
//!
//! Both are bounds that may be too low (then a read does more work than needed, never less);
//! the rules below keep them from ever being too high:
//! - **Lowering.** A transaction that makes a message ready (send, promotion, group advance,
//!   `set_vt` 0, redrive) or leased or delayed with some `vt` records it; at commit, after the
//!   commit is visible, it lowers `mark` below that key and `due` to that `vt`, and lowers the
//!   `low` of every watch in flight on the queue to that key. Within the transaction its own
//!   records already count, so it reads its own messages. An abort lowers nothing: its rows
//!   are gone.
//! - **Raising the mark.** A read takes a watch slot (one of `WATCHES` per queue) and notes the
//!   mark before its claim takes a snapshot. At its commit it raises the mark to the last key it
//!   claimed (or past everything, when it found fewer than it asked for), but never to or above
//!   its watch's `low`: the lowest key committed since the note, which its snapshot may not
//!   have seen. A read that found no free slot does not raise. Messages it skipped because
//!   another transaction held them come back only through that transaction's abort, which
//!   lowers.
//! - **Aborts.** A read that aborts lowers the mark back to where its scan started; a
//!   subtransaction's abort does the same and takes away the raises of the transaction's
//!   claims, which it keeps, so a later abort lowers again. Any other verb that may have locked
//!   a ready message (archive, delete, set_vt, nack, purge, drop_queue) resets the mark and
//!   `due` on abort.
//! - **Raising due.** One backend at a time recomputes `due` from the table once it has
//!   passed: it sets a flag, runs the probes, takes a new snapshot for the minimum `vt`, and
//!   publishes the minimum of that and of every `vt` committed while the flag was set. A
//!   recompute older than `BUSY_STALE` no longer makes others skip their probes.
//! - **Prepared transactions** commit in another backend, with no callback here: a PREPARE
//!   resets both bounds of the queues it touched and freezes them (no raising, also by claims
//!   noted while frozen) until `maintain()` finds no prepared transaction left in the database.
//! - **REPEATABLE READ and SERIALIZABLE** transactions read through a snapshot taken at their
//!   start, before their note: their claims never raise the mark, and they never recompute
//!   `due` (they probe when it has passed).
//! - **Everything else** (a restore that bypasses the API, a user's own `UPDATE`, a logical
//!   replication apply) is caught by `maintain()`, which checks each queue's mark against the
//!   table every `CHECK_INTERVAL` and lowers it when a ready message sits below it.
//!
//! An entry carries a generation: a queue dropped and re-created, or an entry re-used, never
//! takes a raise noted on an earlier incarnation.
//!
//! A restart or crash reinitializes shared memory: every bound starts at its minimum. Without
//! `shared_preload_libraries` there is no table: reads scan from the start and probe every
//! time, as before.
use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use super::preloaded;

/// Queues (of all databases) that can have a cursor; others read as without preload.
pub const MAX_QUEUES: usize = 1024;
/// Claims of one queue that can be watched at once (their reads can raise the mark); a claim
/// that finds every slot taken does not raise.
const WATCHES: usize = 16;
/// How often `maintain()` checks a queue's mark against the table (microseconds).
const CHECK_INTERVAL: i64 = 10_000_000;
/// A due recompute running longer than this (it may wait on a lock) no longer makes other
/// readers skip their probes (microseconds).
const BUSY_STALE: i64 = 1_000_000;

/// A claim key: `-priority` then `msg_id`, in the ready index's order.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Key {
    pub p: i32,
    pub id: i64,
}

/// Below every key.
pub const MIN_KEY: Key = Key {
    p: i32::MIN,
    id: i64::MIN,
};
/// Above every key.
pub const MAX_KEY: Key = Key {
    p: i32::MAX,
    id: i64::MAX,
};

impl Key {
    pub fn of(priority: i16, msg_id: i64) -> Key {
        Key {
            p: -i32::from(priority),
            id: msg_id,
        }
    }

    /// From SQL's `ARRAY[-priority, msg_id]` (the order of the ready index); None when it is
    /// not such a pair.
    pub fn from_pair(pair: &[i64]) -> Option<Key> {
        match pair {
            [p, id] => Some(Key {
                p: i32::try_from(*p).ok()?,
                id: *id,
            }),
            _ => None,
        }
    }

    /// The smallest key above this one (`succ().pred()` is this key).
    fn succ(self) -> Key {
        if self.p == i32::MIN {
            MIN_KEY
        } else if self.id == i64::MAX {
            Key {
                p: self.p.saturating_add(1),
                id: i64::MIN,
            }
        } else {
            Key {
                p: self.p,
                id: self.id + 1,
            }
        }
    }

    /// The largest key below this one: a mark that keeps this key above it (MIN_KEY for the
    /// keys of no message, which all sort below every real key).
    fn pred(self) -> Key {
        if self.p == i32::MIN {
            MIN_KEY
        } else if self.id == i64::MIN {
            Key {
                p: self.p.saturating_sub(1),
                id: i64::MAX,
            }
        } else {
            Key {
                p: self.p,
                id: self.id - 1,
            }
        }
    }
}

/// TimestampTz bounds.
const TS_MIN: i64 = i64::MIN;
const TS_MAX: i64 = i64::MAX;

/// A claim's watch over its queue's lowerings.
#[derive(Copy, Clone, Default)]
struct Watch {
    owner: u64, // 0: free
    low: Key,
}

#[derive(Copy, Clone)]
struct Entry {
    dboid: u32, // 0: free
    queue_id: i32,
    seq: u32, // the queue's msg_seq oid: a queue re-created after DROP EXTENSION is another entry
    /// Which incarnation of the entry this is (every (re)initialization takes a new one): a
    /// claim noted on an earlier one never raises this one.
    gen: u64,
    mark: Key,
    events: u64,
    /// The claims in flight that may raise the mark: each keeps the lowest key committed
    /// (lowered) since its note.
    watch: [Watch; WATCHES],
    due: i64,
    due_busy: i32,    // pid of the backend recomputing due, 0 for none
    due_busy_at: i64, // when it started (a recompute older than BUSY_STALE no longer holds others back)
    due_pending: i64,
    frozen: bool,
    checked_at: i64,
}

impl Entry {
    fn fresh(dboid: u32, queue_id: i32, seq: u32) -> Entry {
        Entry {
            dboid,
            queue_id,
            seq,
            gen: 0,
            mark: MIN_KEY,
            events: 0,
            watch: [Watch::default(); WATCHES],
            due: TS_MIN,
            due_busy: 0,
            due_busy_at: 0,
            due_pending: TS_MAX,
            frozen: false,
            checked_at: TS_MIN,
        }
    }

    /// Lowers the mark below `key` and records the event for raises in flight.
    fn lower(&mut self, key: Key) {
        self.mark = self.mark.min(key.pred());
        self.events += 1;
        for w in self.watch.iter_mut().filter(|w| w.owner != 0) {
            w.low = w.low.min(key);
        }
    }

    fn lower_due(&mut self, vt: i64) {
        self.due = self.due.min(vt);
        if self.due_busy != 0 {
            self.due_pending = self.due_pending.min(vt);
        }
    }

    fn reset(&mut self) {
        self.lower(MIN_KEY);
        self.lower_due(TS_MIN);
    }

    /// Takes a watch slot for a claim (`owner`: a token unique to it); None when all are taken.
    fn watch(&mut self, owner: u64) -> Option<usize> {
        let i = self.watch.iter().position(|w| w.owner == 0)?;
        self.watch[i] = Watch {
            owner,
            low: MAX_KEY,
        };
        Some(i)
    }

    /// Ends a claim's watch: raises the mark to `target` (when given), capped below every key
    /// lowered since the watch began, and frees the slot.
    fn unwatch(&mut self, slot: usize, owner: u64, target: Option<Key>) {
        let w = self.watch[slot];
        if w.owner != owner {
            return;
        }
        self.watch[slot] = Watch::default();
        if let Some(target) = target.filter(|_| !self.frozen) {
            self.mark = self.mark.max(target.min(w.low.pred()));
        }
    }
}

#[derive(Copy, Clone)]
pub struct Cursors {
    entries: [Entry; MAX_QUEUES],
    /// Incremented by every freeze, so a thaw can tell one happened while it looked.
    freezes: u64,
    /// The generation the next (re)initialized entry takes.
    next_gen: u64,
}

impl Default for Cursors {
    fn default() -> Self {
        Cursors {
            entries: [Entry::fresh(0, 0, 0); MAX_QUEUES],
            freezes: 0,
            next_gen: 1,
        }
    }
}

// SAFETY: plain data behind the LWLock.
unsafe impl PGRXSharedMemory for Cursors {}

static CURSORS: PgLwLock<Cursors> = unsafe { PgLwLock::new(c"pgflow_cursors") };

pub(super) fn init() {
    pg_shmem_init!(CURSORS);
}

/// Where a queue's entry is looked for first (linear probing from there). `forget` leaves a
/// tombstone (the database's oid, queue 0), never a gap, so a lookup may stop at a gap.
fn slot_of(db: u32, queue_id: i32) -> usize {
    (queue_id as u32 as usize)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(db as usize)
        % MAX_QUEUES
}

/// Whether this transaction reads through one snapshot taken at its start (REPEATABLE READ or
/// SERIALIZABLE): its claims may not have seen sends that committed before they began, so
/// they never raise the cursor, and it never recomputes the due time.
fn xact_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

fn my_db() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

impl Cursors {
    /// The entry of a queue, if it has one (read-only: under the shared lock).
    fn get(&self, queue_id: i32, seq: u32) -> Option<&Entry> {
        let db = my_db();
        let start = slot_of(db, queue_id);
        for i in 0..MAX_QUEUES {
            let e = &self.entries[(start + i) % MAX_QUEUES];
            if e.dboid == db && e.queue_id == queue_id {
                return (e.seq == seq).then_some(e);
            }
            if e.dboid == 0 {
                return None;
            }
        }
        None
    }

    /// The entry of a queue, created when `create`; None when the table is full.
    fn find(&mut self, queue_id: i32, seq: u32, create: bool) -> Option<&mut Entry> {
        let db = my_db();
        let start = slot_of(db, queue_id);
        let mut free = None;
        for i in 0..MAX_QUEUES {
            let idx = (start + i) % MAX_QUEUES;
            let e = &self.entries[idx];
            if e.dboid == db && e.queue_id == queue_id {
                if e.seq != seq {
                    if !create {
                        return None;
                    }
                    self.entries[idx] = Entry::fresh(db, queue_id, seq);
                    self.entries[idx].gen = self.next_gen;
                    self.next_gen += 1;
                }
                return Some(&mut self.entries[idx]);
            }
            if (e.dboid == 0 || e.queue_id == 0) && free.is_none() {
                free = Some(idx);
            }
            if e.dboid == 0 {
                break;
            }
        }
        let idx = free.filter(|_| create)?;
        self.entries[idx] = Entry::fresh(db, queue_id, seq);
        self.entries[idx].gen = self.next_gen;
        self.next_gen += 1;
        Some(&mut self.entries[idx])
    }
}

/// A claim in flight: noted before the claim's snapshot, finished after it.
#[derive(Clone, Copy)]
struct Claim {
    queue_id: i32,
    seq: u32,
    /// The entry's generation at the note, and the claim's watch slot and token.
    gen: u64,
    slot: Option<usize>,
    token: u64,
    /// Where the claim's scan started: an abort lowers the mark back to it, whether or not
    /// the claim got as far as noting a row.
    from: Key,
    /// The queue was frozen at the note: the claim never raises, even after a thaw.
    frozen: bool,
    count: i64,
    first: Key,
    last: Key,
}

/// What this transaction did to each queue's bounds, applied at its end.
#[derive(Default, Clone)]
struct Xact {
    /// (queue, seq, lowest key) of messages it made ready.
    ready: Vec<(i32, u32, Key)>,
    /// (queue, seq, earliest vt) of messages it leased or delayed.
    due: Vec<(i32, u32, i64)>,
    /// Finished claims: (claim, raise target).
    claims: Vec<(Claim, Key)>,
    /// Queues whose rows it may have locked: reset on abort.
    touched: Vec<(i32, u32)>,
    /// The claim between `claim_begin` and `claim_end`.
    current: Option<Claim>,
    /// Queues whose due this backend is recomputing (cleared by `due_end`, or at the end).
    recomputing: Vec<(i32, u32)>,
    /// Queues this transaction dropped: their entries are freed at its commit.
    forget: Vec<i32>,
    /// Databases whose every entry goes at this transaction's commit: one it dropped (DROP
    /// DATABASE), or this one when it drops pgflow (DROP EXTENSION, DROP SCHEMA). Before, a
    /// dropped database's entries stayed for good, and a server that made and dropped test
    /// databases ran out of entries (issue #30).
    drop_dbs: Vec<u32>,
}

thread_local! {
    static XACT: RefCell<Xact> = RefCell::new(Xact::default());
    /// Numbers this backend's claims (with its pid, the owner token of a watch slot).
    static TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn ensure_callbacks() {
    super::xact::ensure();
}

fn touch(x: &mut Xact, queue_id: i32, seq: u32) {
    if !x.touched.contains(&(queue_id, seq)) {
        x.touched.push((queue_id, seq));
    }
}

/// This backend's transaction state, taken out without allocating or panicking (None when the
/// cell is busy, which cannot happen between statements).
fn take_xact() -> Option<Xact> {
    XACT.try_with(|x| x.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)))
        .ok()
        .flatten()
}

/// Commit: publishes the transaction's lowerings and raises (`commit`), and adds to `wake` the
/// queues whose due time it brought forward, so that their sleeping readers look again.
pub(super) fn at_commit(wake: &mut super::xact::WakeSet) {
    if let Some(x) = take_xact() {
        commit(&x, wake);
    }
}

/// Abort (`prepared`: PREPARE TRANSACTION): see `abort`.
pub(super) fn at_abort(prepared: bool) {
    if let Some(x) = take_xact() {
        abort(&x, prepared);
    }
}

/// A subtransaction that aborts undoes its claims and locks; the top transaction may still
/// commit, so none of its claims may raise the mark.
pub(super) fn at_subabort() {
    // The claims' rows are released now, but the parent keeps the locks of claims made before
    // the savepoint: keep every claim, so that the top-level abort (or PREPARE) lowers again,
    // and take away their raises (MIN_KEY raises nothing). Nothing is allocated: the parent's
    // lists are used in place.
    let _ = XACT.try_with(|x| {
        let Ok(mut x) = x.try_borrow_mut() else {
            return;
        };
        if let Some(c) = x.current.take() {
            // Within the capacity reserved by claim_begin.
            x.claims.push((c, MIN_KEY));
        }
        for c in x.claims.iter_mut() {
            c.1 = MIN_KEY;
        }
        let recomputing = std::mem::take(&mut x.recomputing);
        let mut t = CURSORS.exclusive();
        release_recompute_of(&mut t, &recomputing);
        undo_claims(&mut t, x.claims.iter().map(|c| &c.0));
        for &(q, seq) in &x.touched {
            if let Some(e) = t.find(q, seq, false) {
                e.reset();
            }
        }
    });
}

/// A recompute this backend started and did not finish: leave due as it was.
fn release_recompute(t: &mut Cursors, x: &Xact) {
    release_recompute_of(t, &x.recomputing);
}

fn release_recompute_of(t: &mut Cursors, recomputing: &[(i32, u32)]) {
    let me = unsafe { pg_sys::MyProcPid };
    for &(q, seq) in recomputing {
        if let Some(e) = t.find(q, seq, false) {
            if e.due_busy == me {
                e.due_busy = 0;
                e.due = e.due.min(e.due_pending);
            }
        }
    }
}

/// Claims that will not commit: every row they locked (noted or not) has a key above their
/// `from`, so the mark goes back there, and their watches end without a raise.
fn undo_claims<'a>(t: &mut Cursors, claims: impl Iterator<Item = &'a Claim>) {
    for c in claims {
        if let Some(e) = t.find(c.queue_id, c.seq, false) {
            e.lower(c.from.succ());
            if let (true, Some(slot)) = (e.gen == c.gen, c.slot) {
                e.unwatch(slot, c.token, None);
            }
        }
    }
}

fn commit(x: &Xact, wake: &mut super::xact::WakeSet) {
    if x.ready.is_empty()
        && x.due.is_empty()
        && x.claims.is_empty()
        && x.recomputing.is_empty()
        && x.forget.is_empty()
        && x.drop_dbs.is_empty()
    {
        return;
    }
    let mut t = CURSORS.exclusive();
    release_recompute(&mut t, x);
    for &(q, seq, key) in &x.ready {
        if let Some(e) = t.find(q, seq, true) {
            e.lower(key);
        }
    }
    for &(q, seq, vt) in &x.due {
        if let Some(e) = t.find(q, seq, true) {
            // Readers asleep until the old due time must look at the new one.
            if vt < e.due {
                wake.add(q);
            }
            e.lower_due(vt);
        }
    }
    for &(c, target) in &x.claims {
        if let (Some(e), Some(slot)) = (t.find(c.queue_id, c.seq, false), c.slot) {
            if e.gen == c.gen {
                e.unwatch(slot, c.token, (!c.frozen).then_some(target));
            }
        }
    }
    let db = my_db();
    for &q in &x.forget {
        for e in t
            .entries
            .iter_mut()
            .filter(|e| e.dboid == db && e.queue_id == q)
        {
            *e = Entry::fresh(db, 0, 0);
        }
    }
    // Left as `forget` leaves them (free for reuse, and still a step of the probe chains).
    for e in t
        .entries
        .iter_mut()
        .filter(|e| e.queue_id != 0 && x.drop_dbs.contains(&e.dboid))
    {
        *e = Entry::fresh(e.dboid, 0, 0);
    }
}

fn abort(x: &Xact, prepared: bool) {
    let claims = || x.claims.iter().map(|c| &c.0).chain(x.current.iter());
    let frozen = prepared && !(x.ready.is_empty() && x.due.is_empty());
    if claims().next().is_none() && x.touched.is_empty() && x.recomputing.is_empty() && !frozen {
        return;
    }
    let mut t = CURSORS.exclusive();
    release_recompute(&mut t, x);
    undo_claims(&mut t, claims());
    for &(q, seq) in &x.touched {
        if let Some(e) = t.find(q, seq, false) {
            e.reset();
        }
    }
    if prepared {
        let queues = x
            .ready
            .iter()
            .map(|r| (r.0, r.1))
            .chain(x.due.iter().map(|d| (d.0, d.1)))
            .chain(x.touched.iter().copied())
            .chain(claims().map(|c| (c.queue_id, c.seq)));
        t.freezes += 1;
        for (q, seq) in queues {
            if let Some(e) = t.find(q, seq, true) {
                e.reset();
                e.frozen = true;
            }
        }
    }
}

/// Before a claim's snapshot: the key to scan from, and a note for `claim_end`. Messages this
/// transaction made ready itself count.
pub fn claim_begin(queue_id: i32, seq: u32) -> Key {
    if !preloaded() {
        return MIN_KEY;
    }
    ensure_callbacks();
    let token = TOKEN.with(|n| {
        let next = n.get().wrapping_add(1).max(1);
        n.set(next);
        (u64::from(unsafe { pg_sys::MyProcPid } as u32) << 32) | (next & 0xffff_ffff)
    });
    let found = CURSORS
        .exclusive()
        .find(queue_id, seq, true)
        .map(|e| (e.mark, e.gen, e.watch(token), e.frozen));
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        let own = x
            .ready
            .iter()
            .filter(|r| r.0 == queue_id && r.1 == seq)
            .map(|r| r.2.pred())
            .min();
        let Some((mark, gen, slot, frozen)) = found else {
            x.current = None;
            return MIN_KEY;
        };
        let from = own.map_or(mark, |o| o.min(mark));
        // Room for this claim in `claims`, so that a subtransaction's abort can keep it there
        // without allocating (at_subabort).
        x.claims.reserve(1);
        x.current = Some(Claim {
            queue_id,
            seq,
            gen,
            slot,
            token,
            from,
            frozen,
            count: 0,
            first: MAX_KEY,
            last: MIN_KEY,
        });
        from
    })
}

/// The messages one claim took: `n` of them, keys from `first` to `last` (once per claim, from
/// an aggregate over its rows).
pub fn claim_span(first: Key, last: Key, n: i64) {
    if !preloaded() || n <= 0 {
        return;
    }
    XACT.with(|x| {
        if let Some(c) = x.borrow_mut().current.as_mut() {
            c.count += n;
            c.first = c.first.min(first);
            c.last = c.last.max(last);
        }
    });
}

/// After a claim of up to `qty`: at commit the mark may rise past what it claimed, or past
/// everything when it found fewer than `qty`.
///
/// A claim that took nothing locked nothing, so it has nothing to wait for: its watch ends now,
/// raising the mark as its commit would (the cap is the same: every key lowered since its
/// note). A long-poll read, which looks again and again in one transaction, so holds at most
/// one watch slot at a time; before, each empty look kept its slot until the read ended, and 4
/// idle long-pollers used up all 16 (issue #30).
pub fn claim_end(qty: i64) {
    if !preloaded() {
        return;
    }
    let empty = XACT.with(|x| {
        let x = x.borrow();
        x.current.filter(|c| c.count == 0)
    });
    if let Some(c) = empty {
        XACT.with(|x| x.borrow_mut().current = None);
        if let Some(slot) = c.slot {
            let target = (!xact_snapshot() && !c.frozen).then_some(MAX_KEY);
            let mut t = CURSORS.exclusive();
            if let Some(e) = t.find(c.queue_id, c.seq, false) {
                if e.gen == c.gen {
                    e.unwatch(slot, c.token, target);
                }
            }
        }
        return;
    }
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        if let Some(c) = x.current.take() {
            // A transaction snapshot may predate sends that committed before the claim noted
            // the ring: such a claim must not raise (MIN_KEY raises nothing), but its abort
            // still lowers.
            let target = if xact_snapshot() {
                MIN_KEY
            } else if c.count >= qty {
                c.last
            } else {
                MAX_KEY
            };
            x.claims.push((c, target));
        }
    });
}

/// This transaction made a message of the queue ready.
pub fn ready(queue_id: i32, seq: u32, key: Key) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        match x.ready.iter_mut().find(|r| r.0 == queue_id && r.1 == seq) {
            Some(r) => r.2 = r.2.min(key),
            None => x.ready.push((queue_id, seq, key)),
        }
    });
}

/// This transaction leased or delayed a message of the queue until `vt`.
pub fn due_at(queue_id: i32, seq: u32, vt: i64) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        match x.due.iter_mut().find(|r| r.0 == queue_id && r.1 == seq) {
            Some(r) => r.2 = r.2.min(vt),
            None => x.due.push((queue_id, seq, vt)),
        }
    });
}

/// This transaction may lock messages of the queue (ready ones among them).
pub fn touch_queue(queue_id: i32, seq: u32) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| touch(&mut x.borrow_mut(), queue_id, seq));
}

/// What a read does about lease expiry and promotion at `now`.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Probe {
    /// Nothing can be due: skip the probes.
    Skip,
    /// Probe (no shared memory, or the queue is frozen).
    Probe,
    /// Probe, then recompute due with `due_end`.
    Recompute,
}

pub fn due_begin(queue_id: i32, seq: u32, now: i64) -> Probe {
    if !preloaded() {
        return Probe::Probe;
    }
    ensure_callbacks();
    // This transaction's own leases and delays are not in shared memory before its commit.
    if own_due(queue_id, seq).is_some_and(|vt| vt <= now) {
        XACT.with(|x| touch(&mut x.borrow_mut(), queue_id, seq));
        return Probe::Probe;
    }
    let me = unsafe { pg_sys::MyProcPid };
    let real_now = unsafe { pg_sys::GetCurrentTimestamp() };
    let busy = |e: &Entry| e.due_busy != 0 && real_now - e.due_busy_at < BUSY_STALE;
    let quick = CURSORS
        .share()
        .get(queue_id, seq)
        .is_some_and(|e| !e.frozen && (now < e.due || busy(e)));
    if quick {
        return Probe::Skip;
    }
    let r = {
        let mut t = CURSORS.exclusive();
        match t.find(queue_id, seq, true) {
            None => Probe::Probe,
            Some(e) if e.frozen => Probe::Probe,
            // Its snapshot may predate leases committed before the recompute's flag was set.
            Some(e) if xact_snapshot() && now >= e.due => Probe::Probe,
            Some(e) if now < e.due => Probe::Skip,
            Some(e) if busy(e) => Probe::Skip,
            // A recompute that has run long (waiting on a lock): probe without it.
            Some(e) if e.due_busy != 0 => Probe::Probe,
            Some(e) => {
                e.due_busy = me;
                e.due_busy_at = real_now;
                e.due_pending = TS_MAX;
                Probe::Recompute
            }
        }
    };
    if r != Probe::Skip {
        // The probes change leases and delays: an abort must leave due at its minimum.
        XACT.with(|x| {
            let mut x = x.borrow_mut();
            touch(&mut x, queue_id, seq);
            if r == Probe::Recompute {
                x.recomputing.push((queue_id, seq));
            }
        });
    }
    r
}

/// Publishes the recomputed due (`next`: the minimum vt the probe's snapshot found).
pub fn due_end(queue_id: i32, seq: u32, next: Option<i64>) {
    if !preloaded() {
        return;
    }
    let me = unsafe { pg_sys::MyProcPid };
    let mut t = CURSORS.exclusive();
    if let Some(e) = t.find(queue_id, seq, false) {
        if e.due_busy == me {
            e.due = next.unwrap_or(TS_MAX).min(e.due_pending);
            e.due_busy = 0;
        }
    }
    drop(t);
    XACT.with(|x| x.borrow_mut().recomputing.retain(|r| *r != (queue_id, seq)));
}

/// The earliest vt this transaction gave a lease or delay of the queue.
fn own_due(queue_id: i32, seq: u32) -> Option<i64> {
    XACT.with(|x| {
        x.borrow()
            .due
            .iter()
            .find(|d| d.0 == queue_id && d.1 == seq)
            .map(|d| d.2)
    })
}

/// The earliest time anything of the queue can come due, when known.
pub fn due(queue_id: i32, seq: u32) -> Option<i64> {
    if !preloaded() {
        return None;
    }
    let shared = CURSORS
        .share()
        .get(queue_id, seq)
        .filter(|e| !e.frozen)
        .map(|e| e.due)?;
    Some(own_due(queue_id, seq).map_or(shared, |o| o.min(shared)))
}

/// The mark to check against the table, when its check is due at `now` (maintain()).
pub fn check_begin(queue_id: i32, seq: u32, now: i64) -> Option<Key> {
    if !preloaded() {
        return None;
    }
    let mut t = CURSORS.exclusive();
    let e = t.find(queue_id, seq, false)?;
    if now < e.checked_at.saturating_add(CHECK_INTERVAL) || e.mark == MIN_KEY {
        return None;
    }
    // A `now` in the future (a test's) must not hold off the real checks that follow.
    e.checked_at = now.min(unsafe { pg_sys::GetCurrentTimestamp() });
    Some(e.mark)
}

/// A ready message was found at or below the mark: lower it (an event, like a send's commit).
pub fn lower_now(queue_id: i32, seq: u32, key: Key) {
    if !preloaded() {
        return;
    }
    let mut t = CURSORS.exclusive();
    if let Some(e) = t.find(queue_id, seq, false) {
        e.lower(key);
    }
}

/// Forgets every queue of a database when the current transaction commits (see `drop_dbs`).
pub fn drop_database_entries(dboid: u32) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| x.borrow_mut().drop_dbs.push(dboid));
}

/// Forgets a dropped queue when the drop commits.
pub fn forget(queue_id: i32) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| x.borrow_mut().forget.push(queue_id));
}

/// The freeze count, read before looking for prepared transactions.
pub fn freezes() -> u64 {
    if !preloaded() {
        return 0;
    }
    CURSORS.share().freezes
}

/// No prepared transaction was left in this database when `freezes` was `seen`: thaw its
/// queues, unless a PREPARE has frozen one since.
pub fn thaw(seen: u64) -> bool {
    if !preloaded() {
        return false;
    }
    let db = my_db();
    let mut t = CURSORS.exclusive();
    if t.freezes != seen {
        return false;
    }
    for e in t.entries.iter_mut().filter(|e| e.dboid == db && e.frozen) {
        e.frozen = false;
    }
    true
}

/// One queue's state, for `pgflow.cursor_status()`.
pub struct Status {
    pub queue_id: i32,
    pub seq: u32,
    pub mark: Key,
    pub due: i64,
    pub events: u64,
    pub frozen: bool,
}

pub fn status() -> Vec<Status> {
    if !preloaded() {
        return Vec::new();
    }
    let db = my_db();
    let t = CURSORS.share();
    t.entries
        .iter()
        .filter(|e| e.dboid == db)
        .filter(|e| e.queue_id != 0)
        .map(|e| Status {
            queue_id: e.queue_id,
            seq: e.seq,
            mark: e.mark,
            due: e.due,
            events: e.events,
            frozen: e.frozen,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(p: i32, id: i64) -> Key {
        Key { p, id }
    }

    #[test]
    fn pred_is_the_largest_key_below() {
        assert_eq!(k(0, 5).pred(), k(0, 4));
        assert_eq!(k(-3, i64::MIN).pred(), k(-4, i64::MAX));
        assert_eq!(MIN_KEY.pred(), MIN_KEY);
        assert!(
            Key::of(5, 1) < Key::of(0, 1),
            "a higher priority sorts first"
        );
        assert!(MIN_KEY < Key::of(i16::MAX, 1) && Key::of(i16::MIN, i64::MAX) < MAX_KEY);
    }

    #[test]
    fn a_raise_never_passes_a_key_lowered_in_its_window() {
        let mut e = Entry::fresh(1, 1, 1);
        let w = e.watch(7).unwrap();
        e.lower(k(0, 7)); // a send of id 7 committed after the claim's note
        e.unwatch(w, 7, Some(k(0, 10)));
        assert_eq!(e.mark, k(0, 6), "capped just below 7");
        // A claim noted after that event raises past it.
        let w = e.watch(8).unwrap();
        e.unwatch(w, 8, Some(k(0, 10)));
        assert_eq!(e.mark, k(0, 10));
        // Lowering always wins, and a raise never lowers.
        e.lower(k(0, 3));
        assert_eq!(e.mark, k(0, 2));
        let w = e.watch(9).unwrap();
        e.unwatch(w, 9, Some(k(0, 1)));
        assert_eq!(e.mark, k(0, 2));
    }

    #[test]
    fn however_many_lowerings_come_the_lowest_one_caps() {
        let mut e = Entry::fresh(1, 1, 1);
        let w = e.watch(1).unwrap();
        e.lower(k(0, 40));
        for i in 0..10_000 {
            e.lower(k(0, 100 + i));
        }
        e.unwatch(w, 1, Some(MAX_KEY));
        assert_eq!(e.mark, k(0, 39));
    }

    #[test]
    fn slots_run_out_and_come_back_and_stale_owners_do_nothing() {
        let mut e = Entry::fresh(1, 1, 1);
        let slots: Vec<usize> = (1..=WATCHES as u64).map(|o| e.watch(o).unwrap()).collect();
        assert_eq!(e.watch(99), None, "all taken: that claim will not raise");
        e.unwatch(slots[0], 1, None);
        let again = e.watch(100).unwrap();
        assert_eq!(again, slots[0]);
        // The former owner's late release neither frees nor raises.
        e.unwatch(again, 1, Some(k(0, 50)));
        assert_eq!((e.watch[again].owner, e.mark), (100, MIN_KEY));
    }

    #[test]
    fn a_frozen_queue_raises_nothing() {
        let mut f = Entry::fresh(1, 1, 1);
        let w = f.watch(1).unwrap();
        f.frozen = true;
        f.unwatch(w, 1, Some(k(0, 50)));
        assert_eq!(f.mark, MIN_KEY);
        assert_eq!(f.watch[w].owner, 0, "the slot is freed anyway");
    }

    #[test]
    fn a_reset_puts_both_bounds_at_their_minimum() {
        let mut e = Entry::fresh(1, 1, 1);
        let w = e.watch(1).unwrap();
        e.unwatch(w, 1, Some(k(0, 50)));
        e.due = 1_000;
        let w = e.watch(2).unwrap();
        e.reset();
        assert_eq!((e.mark, e.due), (MIN_KEY, TS_MIN));
        // A raise noted before the reset cannot undo it.
        e.unwatch(w, 2, Some(k(0, 50)));
        assert_eq!(e.mark, MIN_KEY);
    }

    #[test]
    fn a_recompute_keeps_every_vt_committed_while_it_ran() {
        let mut e = Entry::fresh(1, 1, 1);
        e.due_busy = 42;
        e.due_pending = TS_MAX;
        e.lower_due(500); // a lease committed during the recompute
        assert_eq!(e.due_pending, 500);
        let computed = 900; // what the recompute's snapshot saw
        e.due = computed.min(e.due_pending);
        assert_eq!(e.due, 500);
    }
}
