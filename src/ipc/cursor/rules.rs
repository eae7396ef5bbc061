//! The claim cursor's rules as plain Rust on plain data: no Postgres call, no global, no lock.
//! The shell (`mod.rs`) supplies what Postgres knows (the database, the pid, the isolation
//! level, the clock), holds the LWLock around every call that takes the table, and keeps the
//! transaction's record (`Xact`) in a thread-local. The rules themselves are stated in
//! `mod.rs`'s header and in `src/ipc/README.md`; this file carries them out, and its tests and
//! the model check (`model.rs`) pin them.
//!
//! What may be called at a transaction's end (`commit`, `abort`, `subabort`) allocates nothing
//! and cannot panic: no indexing past a bound, no arithmetic that overflows, no `RefCell`.

use crate::ipc::table::{self, Census, Keyed};

/// Claims of one queue that can be watched at once (their reads can raise the mark); a claim
/// that finds every slot taken does not raise.
pub const WATCHES: usize = 16;
/// How often `maintain()` checks a queue's mark against the table (microseconds).
pub const CHECK_INTERVAL: i64 = 10_000_000;
/// A due recompute running longer than this (it may wait on a lock) no longer makes other
/// readers skip their probes (microseconds).
pub const BUSY_STALE: i64 = 1_000_000;

/// A claim key: `-priority` then `msg_id`, in the ready index's order.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
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
    pub fn succ(self) -> Key {
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
    pub fn pred(self) -> Key {
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
pub const TS_MIN: i64 = i64::MIN;
pub const TS_MAX: i64 = i64::MAX;

/// Who calls: what Postgres knows about the calling backend.
#[derive(Copy, Clone, Debug)]
pub struct Ctx {
    /// The backend's database.
    pub db: u32,
    /// Its pid (the owner of a due recompute).
    pub pid: i32,
    /// Whether its transaction reads through one snapshot taken at its start (REPEATABLE READ
    /// or SERIALIZABLE): its claims may not have seen sends that committed before they began,
    /// so they never raise the cursor, and it never recomputes the due time.
    pub snapshot: bool,
}

/// A claim's watch over its queue's lowerings.
#[derive(Copy, Clone, Default, Debug)]
pub struct Watch {
    pub owner: u64, // 0: free
    pub low: Key,
}

#[derive(Copy, Clone, Debug)]
pub struct Entry {
    pub dboid: u32, // 0: free
    pub queue_id: i32,
    pub seq: u32, // the queue's msg_seq oid: a queue re-created after DROP EXTENSION is another entry
    /// Which incarnation of the entry this is (every (re)initialization takes a new one): a
    /// claim noted on an earlier one never raises this one.
    pub gen: u64,
    pub mark: Key,
    pub events: u64,
    /// The claims in flight that may raise the mark: each keeps the lowest key committed
    /// (lowered) since its note.
    pub watch: [Watch; WATCHES],
    pub due: i64,
    pub due_busy: i32,    // pid of the backend recomputing due, 0 for none
    pub due_busy_at: i64, // when it started (a recompute older than BUSY_STALE no longer holds others back)
    pub due_pending: i64,
    pub frozen: bool,
    pub checked_at: i64,
}

impl Entry {
    pub fn fresh(dboid: u32, queue_id: i32, seq: u32) -> Entry {
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
    pub fn lower(&mut self, key: Key) {
        self.mark = self.mark.min(key.pred());
        self.events = self.events.wrapping_add(1);
        for w in self.watch.iter_mut().filter(|w| w.owner != 0) {
            w.low = w.low.min(key);
        }
    }

    pub fn lower_due(&mut self, vt: i64) {
        self.due = self.due.min(vt);
        if self.due_busy != 0 {
            self.due_pending = self.due_pending.min(vt);
        }
    }

    pub fn reset(&mut self) {
        self.lower(MIN_KEY);
        self.lower_due(TS_MIN);
    }

    /// Takes a watch slot for a claim (`owner`: a token unique to it); None when all are taken.
    pub fn watch(&mut self, owner: u64) -> Option<usize> {
        let i = self.watch.iter().position(|w| w.owner == 0)?;
        self.watch[i] = Watch {
            owner,
            low: MAX_KEY,
        };
        Some(i)
    }

    /// Ends a claim's watch: raises the mark to `target` (when given), capped below every key
    /// lowered since the watch began, and frees the slot.
    pub fn unwatch(&mut self, slot: usize, owner: u64, target: Option<Key>) {
        let Some(w) = self.watch.get(slot).copied() else {
            return;
        };
        if w.owner != owner {
            return;
        }
        self.watch[slot] = Watch::default();
        if let Some(target) = target.filter(|_| !self.frozen) {
            self.mark = self.mark.max(target.min(w.low.pred()));
        }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry::fresh(0, 0, 0)
    }
}

impl Keyed for Entry {
    fn key(&self) -> (u32, i32) {
        (self.dboid, self.queue_id)
    }
    fn set_key(&mut self, db: u32, queue_id: i32) {
        self.dboid = db;
        self.queue_id = queue_id;
    }
}

/// What the shared table keeps beside its entries.
#[derive(Copy, Clone)]
pub struct Head {
    /// Live entries and refusals (a queue that found the table full reads from its start).
    pub census: Census,
    /// Incremented by every freeze, so a thaw can tell one happened while it looked.
    pub freezes: u64,
    /// The generation the next (re)initialized entry takes.
    pub next_gen: u64,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            census: Census::default(),
            freezes: 0,
            next_gen: 1,
        }
    }
}

/// The shared table, held exclusively: one entry per queue (`ipc::table` finds, makes and
/// frees them), `pgflow.max_queues` of them.
pub struct Cursors<'a> {
    pub head: &'a mut Head,
    pub entries: &'a mut [Entry],
}

/// The shared table, held in shared mode.
pub struct View<'a> {
    pub head: &'a Head,
    pub entries: &'a [Entry],
}

impl<'a> View<'a> {
    /// The entry of a queue, if it has one.
    pub fn get(&self, db: u32, queue_id: i32, seq: u32) -> Option<&'a Entry> {
        table::index(self.entries, db, queue_id)
            .map(|i| &self.entries[i])
            .filter(|e| e.seq == seq)
    }

    /// Entries in use: of every database, and of `db`.
    pub fn used(&self, db: u32) -> (usize, usize) {
        table::used(self.entries, db)
    }
}

impl Cursors<'_> {
    /// The entry of a queue, made (or made again, for a queue re-created with another `seq`)
    /// when `create`; None when it has none, or when the table refused one.
    pub fn find(&mut self, db: u32, queue_id: i32, seq: u32, create: bool) -> Option<&mut Entry> {
        let idx = if create {
            let (i, made) = table::find_or_make(&mut self.head.census, self.entries, db, queue_id)?;
            if made {
                self.init(i, seq);
            }
            i
        } else {
            table::index(self.entries, db, queue_id)?
        };
        if self.entries[idx].seq != seq {
            if !create {
                return None;
            }
            self.init(idx, seq);
        }
        Some(&mut self.entries[idx])
    }

    /// A new incarnation of entry `idx`: a claim noted on an earlier one never raises it.
    fn init(&mut self, idx: usize, seq: u32) {
        let (db, q) = self.entries[idx].key();
        let mut e = Entry::fresh(db, q, seq);
        e.gen = self.head.next_gen;
        self.head.next_gen = self.head.next_gen.wrapping_add(1);
        self.entries[idx] = e;
    }

    /// Frees a dropped queue's entry.
    fn forget(&mut self, db: u32, queue_id: i32) {
        table::forget(&mut self.head.census, self.entries, db, queue_id);
    }
}

/// A table of its own, for the tests and the model.
#[cfg(test)]
pub struct Owned {
    pub head: Head,
    pub entries: Vec<Entry>,
}

#[cfg(test)]
impl Owned {
    pub fn new(len: usize) -> Owned {
        Owned {
            head: Head::default(),
            entries: vec![Entry::default(); len],
        }
    }

    pub fn tab(&mut self) -> Cursors<'_> {
        Cursors {
            head: &mut self.head,
            entries: &mut self.entries,
        }
    }

    pub fn view(&self) -> View<'_> {
        View {
            head: &self.head,
            entries: &self.entries,
        }
    }
}

/// A claim in flight: noted before the claim's snapshot, finished after it.
#[derive(Clone, Copy, Debug)]
pub struct Claim {
    pub queue_id: i32,
    pub seq: u32,
    /// The entry's generation at the note, and the claim's watch slot and token.
    pub gen: u64,
    pub slot: Option<usize>,
    pub token: u64,
    /// Where the claim's scan started: an abort lowers the mark back to it, whether or not
    /// the claim got as far as noting a row.
    pub from: Key,
    /// The queue was frozen at the note: the claim never raises, even after a thaw.
    pub frozen: bool,
    pub count: i64,
    pub first: Key,
    pub last: Key,
}

/// What one transaction did to each queue's bounds, applied at its end.
#[derive(Default, Clone, Debug)]
pub struct Xact {
    /// (queue, seq, lowest key) of messages it made ready.
    pub ready: Vec<(i32, u32, Key)>,
    /// (queue, seq, earliest vt) of messages it leased or delayed.
    pub due: Vec<(i32, u32, i64)>,
    /// Finished claims: (claim, raise target).
    pub claims: Vec<(Claim, Key)>,
    /// Queues whose rows it may have locked: reset on abort.
    pub touched: Vec<(i32, u32)>,
    /// The claim between `claim_begin` and `claim_end`.
    pub current: Option<Claim>,
    /// Queues whose due this backend is recomputing (cleared by `due_end`, or at the end).
    pub recomputing: Vec<(i32, u32)>,
    /// Queues this transaction dropped: their entries are freed at its commit.
    pub forget: Vec<i32>,
    /// Databases whose every entry goes at this transaction's commit: one it dropped (DROP
    /// DATABASE), or this one when it drops pgflow (DROP EXTENSION, DROP SCHEMA). Before, a
    /// dropped database's entries stayed for good, and a server that made and dropped test
    /// databases ran out of entries (issue #30).
    pub drop_dbs: Vec<u32>,
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

impl Xact {
    /// The transaction may lock messages of the queue (ready ones among them).
    pub fn touch(&mut self, queue_id: i32, seq: u32) {
        if !self.touched.contains(&(queue_id, seq)) {
            self.touched.push((queue_id, seq));
        }
    }

    /// It made a message of the queue ready.
    pub fn ready(&mut self, queue_id: i32, seq: u32, key: Key) {
        match self
            .ready
            .iter_mut()
            .find(|r| r.0 == queue_id && r.1 == seq)
        {
            Some(r) => r.2 = r.2.min(key),
            None => self.ready.push((queue_id, seq, key)),
        }
    }

    /// It leased or delayed a message of the queue until `vt`.
    pub fn due_at(&mut self, queue_id: i32, seq: u32, vt: i64) {
        match self.due.iter_mut().find(|r| r.0 == queue_id && r.1 == seq) {
            Some(r) => r.2 = r.2.min(vt),
            None => self.due.push((queue_id, seq, vt)),
        }
    }

    /// The earliest vt it gave a lease or delay of the queue.
    pub fn own_due(&self, queue_id: i32, seq: u32) -> Option<i64> {
        self.due
            .iter()
            .find(|d| d.0 == queue_id && d.1 == seq)
            .map(|d| d.2)
    }
}

/// Before a claim's snapshot: notes the claim (a watch slot when one is free) and returns the
/// key to scan from. Messages the transaction made ready itself count. Takes the table (the
/// shell holds the exclusive lock).
pub fn claim_begin(
    t: &mut Cursors,
    x: &mut Xact,
    ctx: Ctx,
    queue_id: i32,
    seq: u32,
    token: u64,
) -> Key {
    let found = t
        .find(ctx.db, queue_id, seq, true)
        .map(|e| (e.mark, e.gen, e.watch(token), e.frozen));
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
    // without allocating (`subabort`).
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
}

/// The messages one claim took: `n` of them, keys from `first` to `last`.
pub fn claim_span(x: &mut Xact, first: Key, last: Key, n: i64) {
    if n <= 0 {
        return;
    }
    if let Some(c) = x.current.as_mut() {
        c.count += n;
        c.first = c.first.min(first);
        c.last = c.last.max(last);
    }
}

/// After a claim of up to `qty`: at commit the mark may rise past what it claimed, or past
/// everything when it found fewer than `qty`. A claim that took nothing is returned: it locked
/// nothing, so its watch ends now (`end_empty`, under the lock), raising the mark as its
/// commit would; a long-poll read so holds at most one watch slot at a time.
pub fn claim_end(x: &mut Xact, ctx: Ctx, qty: i64) -> Option<Claim> {
    let c = x.current.take()?;
    if c.count == 0 {
        return Some(c);
    }
    // A transaction snapshot may predate sends that committed before the claim noted the
    // ring: such a claim must not raise (MIN_KEY raises nothing), but its abort still lowers.
    let target = if ctx.snapshot {
        MIN_KEY
    } else if c.count >= qty {
        c.last
    } else {
        MAX_KEY
    };
    x.claims.push((c, target));
    None
}

/// Ends an empty claim's watch (see `claim_end`).
pub fn end_empty(t: &mut Cursors, ctx: Ctx, c: Claim) {
    let Some(slot) = c.slot else { return };
    let target = (!ctx.snapshot && !c.frozen).then_some(MAX_KEY);
    if let Some(e) = t.find(ctx.db, c.queue_id, c.seq, false) {
        if e.gen == c.gen {
            e.unwatch(slot, c.token, target);
        }
    }
}

/// A recompute this backend started and did not finish: leave due as it was.
fn release_recompute(t: &mut Cursors, ctx: Ctx, recomputing: &[(i32, u32)]) {
    for &(q, seq) in recomputing {
        if let Some(e) = t.find(ctx.db, q, seq, false) {
            if e.due_busy == ctx.pid {
                e.due_busy = 0;
                e.due = e.due.min(e.due_pending);
            }
        }
    }
}

/// Claims that will not commit: every row they locked (noted or not) has a key above their
/// `from`, so the mark goes back there, and their watches end without a raise.
fn undo_claims<'a>(t: &mut Cursors, db: u32, claims: impl Iterator<Item = &'a Claim>) {
    for c in claims {
        if let Some(e) = t.find(db, c.queue_id, c.seq, false) {
            e.lower(c.from.succ());
            if let (true, Some(slot)) = (e.gen == c.gen, c.slot) {
                e.unwatch(slot, c.token, None);
            }
        }
    }
}

/// Whether `commit` has anything to do (the shell takes the lock only then: a transaction that
/// only archived or deleted does not).
pub fn commit_has_work(x: &Xact) -> bool {
    !(x.ready.is_empty()
        && x.due.is_empty()
        && x.claims.is_empty()
        && x.current.is_none()
        && x.recomputing.is_empty()
        && x.forget.is_empty()
        && x.drop_dbs.is_empty())
}

/// Commit, after the commit is visible: lowerings (`ready`), due times, the raises of its
/// claims, forgotten queues and databases. Calls `wake` with each queue whose due time moved
/// earlier, so that its sleeping readers look again.
pub fn commit(t: &mut Cursors, x: &Xact, ctx: Ctx, wake: &mut impl FnMut(i32)) {
    release_recompute(t, ctx, &x.recomputing);
    for &(q, seq, key) in &x.ready {
        if let Some(e) = t.find(ctx.db, q, seq, true) {
            e.lower(key);
        }
    }
    for &(q, seq, vt) in &x.due {
        if let Some(e) = t.find(ctx.db, q, seq, true) {
            // Readers asleep until the old due time must look at the new one.
            if vt < e.due {
                wake(q);
            }
            e.lower_due(vt);
        }
    }
    for &(c, target) in &x.claims {
        if let (Some(e), Some(slot)) = (t.find(ctx.db, c.queue_id, c.seq, false), c.slot) {
            if e.gen == c.gen {
                e.unwatch(slot, c.token, (!c.frozen).then_some(target));
            }
        }
    }
    // A claim still open at commit (a statement that never reached `claim_end`) raises
    // nothing; its watch ends.
    if let Some(c) = x.current {
        undo_claims(t, ctx.db, std::iter::once(&c));
    }
    for &q in &x.forget {
        t.forget(ctx.db, q);
    }
    let (head, entries) = (&mut *t.head, &mut *t.entries);
    table::forget_where(&mut head.census, entries, |d| x.drop_dbs.contains(&d));
}

/// Abort, or PREPARE (`prepared`): its claims' watches end without a raise and the mark goes
/// back to where their scans started; queues it may have locked rows of are reset. A PREPARE
/// also resets and freezes every queue it touched: the prepared transaction commits or aborts
/// in another backend, with no callback here, and `thaw` lifts the freeze once no prepared
/// transaction is left.
pub fn abort(t: &mut Cursors, x: &Xact, ctx: Ctx, prepared: bool) {
    let claims = || x.claims.iter().map(|c| &c.0).chain(x.current.iter());
    release_recompute(t, ctx, &x.recomputing);
    undo_claims(t, ctx.db, claims());
    for &(q, seq) in &x.touched {
        if let Some(e) = t.find(ctx.db, q, seq, false) {
            e.reset();
        }
    }
    if prepared
        && !(x.ready.is_empty()
            && x.due.is_empty()
            && x.touched.is_empty()
            && claims().next().is_none())
    {
        let queues = x
            .ready
            .iter()
            .map(|r| (r.0, r.1))
            .chain(x.due.iter().map(|d| (d.0, d.1)))
            .chain(x.touched.iter().copied())
            .chain(claims().map(|c| (c.queue_id, c.seq)));
        t.head.freezes = t.head.freezes.wrapping_add(1);
        for (q, seq) in queues {
            if let Some(e) = t.find(ctx.db, q, seq, true) {
                e.reset();
                e.frozen = true;
            }
        }
    }
}

/// Whether `abort` (`prepared`) has anything to do.
pub fn abort_has_work(x: &Xact, prepared: bool) -> bool {
    x.current.is_some()
        || !x.claims.is_empty()
        || !x.touched.is_empty()
        || !x.recomputing.is_empty()
        || (prepared && !(x.ready.is_empty() && x.due.is_empty()))
}

/// A subtransaction that aborts: the claims' rows are released now, but the parent keeps the
/// locks of claims made before the savepoint. Every claim stays, so that the top-level abort
/// (or PREPARE) lowers again, and none of them raises any more (MIN_KEY raises nothing); the
/// mark goes back to where each scan started, and the queues it may have locked rows of are
/// reset. The record is changed in place: nothing is allocated (`claim_begin` reserved room).
pub fn subabort(t: &mut Cursors, x: &mut Xact, ctx: Ctx) {
    if let Some(c) = x.current.take() {
        x.claims.push((c, MIN_KEY));
    }
    for c in x.claims.iter_mut() {
        c.1 = MIN_KEY;
    }
    let recomputing = std::mem::take(&mut x.recomputing);
    release_recompute(t, ctx, &recomputing);
    undo_claims(t, ctx.db, x.claims.iter().map(|c| &c.0));
    for &(q, seq) in &x.touched {
        if let Some(e) = t.find(ctx.db, q, seq, false) {
            e.reset();
        }
    }
}

/// The shared part of `due_begin`, under the shared lock: true when the probes can be skipped
/// at once (due not reached, or another backend recomputing it).
pub fn due_quick(t: &View, ctx: Ctx, queue_id: i32, seq: u32, now: i64, real_now: i64) -> bool {
    t.get(ctx.db, queue_id, seq)
        .is_some_and(|e| !e.frozen && (now < e.due || busy(e, real_now)))
}

fn busy(e: &Entry, real_now: i64) -> bool {
    e.due_busy != 0 && real_now.saturating_sub(e.due_busy_at) < BUSY_STALE
}

/// What a read does about lease expiry and promotion at `now` (`real_now`: the clock, for a
/// recompute's age), under the exclusive lock. A probe that changes leases may abort: the
/// shell then records the queue as touched (`note_probe`).
pub fn due_begin(
    t: &mut Cursors,
    ctx: Ctx,
    queue_id: i32,
    seq: u32,
    now: i64,
    real_now: i64,
) -> Probe {
    match t.find(ctx.db, queue_id, seq, true) {
        None => Probe::Probe,
        Some(e) if e.frozen => Probe::Probe,
        // Its snapshot may predate leases committed before the recompute's flag was set.
        Some(e) if ctx.snapshot && now >= e.due => Probe::Probe,
        Some(e) if now < e.due => Probe::Skip,
        Some(e) if busy(e, real_now) => Probe::Skip,
        // A recompute that has run long (waiting on a lock): probe without it.
        Some(e) if e.due_busy != 0 => Probe::Probe,
        Some(e) => {
            e.due_busy = ctx.pid;
            e.due_busy_at = real_now;
            e.due_pending = TS_MAX;
            Probe::Recompute
        }
    }
}

/// Records a probe in the transaction: an abort must leave due at its minimum, and a recompute
/// it does not finish is released at its end.
pub fn note_probe(x: &mut Xact, queue_id: i32, seq: u32, r: Probe) {
    if r != Probe::Skip {
        x.touch(queue_id, seq);
        if r == Probe::Recompute {
            x.recomputing.push((queue_id, seq));
        }
    }
}

/// Publishes a recompute's result (`next`: the minimum vt the probe's snapshot found).
pub fn due_end(
    t: &mut Cursors,
    x: &mut Xact,
    ctx: Ctx,
    queue_id: i32,
    seq: u32,
    next: Option<i64>,
) {
    if let Some(e) = t.find(ctx.db, queue_id, seq, false) {
        if e.due_busy == ctx.pid {
            e.due = next.unwrap_or(TS_MAX).min(e.due_pending);
            e.due_busy = 0;
        }
    }
    x.recomputing.retain(|r| *r != (queue_id, seq));
}

/// The earliest time anything of the queue can come due, when known.
pub fn due(t: &View, x: &Xact, ctx: Ctx, queue_id: i32, seq: u32) -> Option<i64> {
    let shared = t
        .get(ctx.db, queue_id, seq)
        .filter(|e| !e.frozen)
        .map(|e| e.due)?;
    Some(x.own_due(queue_id, seq).map_or(shared, |o| o.min(shared)))
}

/// The mark to check against the table, when its check is due at `now` (maintain()).
/// `real_now`: the clock (a `now` in the future, a test's, must not hold off the real checks).
pub fn check_begin(
    t: &mut Cursors,
    ctx: Ctx,
    queue_id: i32,
    seq: u32,
    now: i64,
    real_now: i64,
) -> Option<Key> {
    let e = t.find(ctx.db, queue_id, seq, false)?;
    if now < e.checked_at.saturating_add(CHECK_INTERVAL) || e.mark == MIN_KEY {
        return None;
    }
    e.checked_at = now.min(real_now);
    Some(e.mark)
}

/// A ready message was found at or below the mark: lower it (an event, like a send's commit).
pub fn lower_now(t: &mut Cursors, ctx: Ctx, queue_id: i32, seq: u32, key: Key) {
    if let Some(e) = t.find(ctx.db, queue_id, seq, false) {
        e.lower(key);
    }
}

/// No prepared transaction was left in the database when `freezes` was `seen`: thaw its
/// queues, unless a PREPARE has frozen one since.
pub fn thaw(t: &mut Cursors, ctx: Ctx, seen: u64) -> bool {
    if t.head.freezes != seen {
        return false;
    }
    for e in t
        .entries
        .iter_mut()
        .filter(|e| e.dboid == ctx.db && e.frozen)
    {
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

pub fn status(t: &View, db: u32) -> Vec<Status> {
    t.entries
        .iter()
        .filter(|e| e.dboid == db && e.queue_id != 0)
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
