//! The model check of the claim cursor and the due time (issue #30). Random interleavings of
//! sessions that send (some with a delay), claim (READ COMMITTED and REPEATABLE READ), run a
//! read's probes (`due_begin`, lease expiry and promotion, a recompute's `due_end` a step later
//! or never), archive, nack (ready at once or after a backoff), commit, abort, roll back to
//! savepoints, PREPARE and finish prepared transactions from another session, and drop and
//! re-create queues, all driving the rules (`rules.rs`) exactly as the shell does, against a
//! naive table of messages with Postgres's visibility: committed versions numbered by commit,
//! one uncommitted version per row (its lock), SKIP LOCKED, READ COMMITTED's re-check of a row
//! changed after the snapshot and REPEATABLE READ's serialization failure. A clock advances by
//! up to a tenth of a second a step; leases and delays last up to six tenths.
//!
//! Each end of a transaction is two steps, as in Postgres: first its effect becomes visible
//! (the commit record and the proc array, or the abort releasing its rows), then its callbacks
//! run; any other session may act in between. The maintenance worker's thaw is two steps too
//! (it reads the freeze count and looks for prepared transactions, then thaws).
//!
//! The oracle, after every step:
//! - every message whose latest committed state is ready, which no open or prepared
//!   transaction holds, and whose readiness came from a transaction end whose callbacks have
//!   run (or from COMMIT/ROLLBACK PREPARED, which has none), has a key above its queue's mark;
//! - every message whose latest committed state is leased or delayed, which no open or prepared
//!   transaction holds (the holder touched the queue: its abort resets the due time), and whose
//!   state came from a transaction end whose callbacks have run, has a vt at or after its
//!   queue's due time, unless a recompute is running;
//! - no claim starts past its own transaction's ready messages.
//!
//! `maintain()`'s periodic check against the table, the safety net for anything outside the
//! API, is left out: the rules must hold without it. At the end of each case, with every
//! session idle, no watch slot may be left taken.
//!
//! Seeded and bounded: `PGFLOW_MODEL_CASES` cases (default 3,000) of `PGFLOW_MODEL_STEPS` steps
//! (default 400) from seed `PGFLOW_MODEL_SEED` (default 1); a failure prints the seed, the case
//! and the steps that led to it.
use super::rules::*;

const DB: u32 = 5;
const QUEUES: i32 = 2;
const SESSIONS: usize = 5;
/// The model's clock ticks in tenths of a second (timestamps are microseconds, as Postgres's):
/// leases and delays last 1 to 6 of them, `BUSY_STALE` is 10.
const UNIT: i64 = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Absent,
    Ready,
    Leased,
    /// Delayed: a send with a delay, or a nack's retry.
    Delayed,
    Gone,
}

struct Msg {
    queue: i32,
    seq: u32,
    key: Key,
    /// Committed versions, oldest first: (commit number, state).
    versions: Vec<(u64, St)>,
    /// Each committed version's vt (model time), beside `versions`.
    vts: Vec<i64>,
    /// The uncommitted version of an open or prepared transaction (its row lock), and its vt.
    pending: Option<(usize, St)>,
    pending_vt: i64,
    /// The transaction end that committed its current lease or delay, if its callbacks may not
    /// have run yet.
    due_by: Option<usize>,
    /// The transaction end (an event) that made it ready or released it, if its callbacks may
    /// not have run yet.
    ready_by: Option<usize>,
}

impl Msg {
    fn latest(&self) -> (u64, St) {
        self.versions.last().copied().unwrap_or((0, St::Absent))
    }
    fn latest_vt(&self) -> i64 {
        self.vts.last().copied().unwrap_or(0)
    }
    fn at(&self, snap: u64) -> St {
        self.versions
            .iter()
            .rev()
            .find(|v| v.0 <= snap)
            .map_or(St::Absent, |v| v.1)
    }
}

/// A row's uncommitted version: the transaction that holds it, and its state.
type Pending = Option<(usize, St)>;

#[derive(Default)]
struct Txn {
    x: Xact,
    rr: bool,
    /// REPEATABLE READ's snapshot, taken at its first statement.
    snap: Option<u64>,
    /// (message, its pending version and vt before this transaction's change), in order.
    changes: Vec<(usize, Pending, i64)>,
    savepoints: Vec<usize>,
    prepared: bool,
}

#[derive(Clone, Copy, Debug)]
enum End {
    Commit(usize),
    Abort(usize),
    SubAbort(usize),
}

#[derive(Default)]
struct Session {
    txn: Option<usize>,
    /// A claim noted (`claim_begin`) and not yet scanned: its queue and `from`.
    claim: Option<(i32, Key)>,
    /// A claim scanned and not yet ended (`claim_end`): the quantity it asked for.
    claim_end: Option<i64>,
    /// A due recompute whose `due_end` is next.
    recompute: Option<(i32, u32)>,
    /// An end whose effect is visible and whose callbacks are next.
    ending: Option<End>,
}

struct World {
    rng: u64,
    t: Owned,
    msgs: Vec<Msg>,
    txns: Vec<Txn>,
    sessions: Vec<Session>,
    published: Vec<bool>,
    clock: u64,
    next_id: i64,
    seqs: [u32; QUEUES as usize],
    token: u64,
    /// The worker's thaw in progress: the freeze count it read.
    thaw_seen: Option<u64>,
    /// The slow session (see `step`).
    slow: usize,
    /// The clock (microseconds): `now` of every probe, and of the leases and delays given.
    now: i64,
    /// How many steps in 20 send.
    sends: usize,
    /// A claim that started past one of its own transaction's ready messages.
    own_missed: Option<String>,
    trace: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            t: Owned::new(64),
            msgs: Vec::new(),
            txns: Vec::new(),
            sessions: (0..SESSIONS).map(|_| Session::default()).collect(),
            published: Vec::new(),
            clock: 1,
            next_id: 1,
            seqs: [1; QUEUES as usize],
            token: 0,
            thaw_seen: None,
            slow: (seed % SESSIONS as u64) as usize,
            now: 1_000 * UNIT,
            sends: 1 + (seed / SESSIONS as u64 % 5) as usize,
            own_missed: None,
            trace: Vec::new(),
        }
    }

    fn rand(&mut self, n: usize) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }

    fn ctx(&self, s: usize) -> Ctx {
        let rr = self.sessions[s].txn.is_some_and(|t| self.txns[t].rr);
        Ctx {
            db: DB,
            pid: 100 + s as i32,
            snapshot: rr,
        }
    }

    fn event(&mut self) -> usize {
        self.published.push(false);
        self.published.len() - 1
    }

    /// The session's transaction, begun if it has none.
    fn txn(&mut self, s: usize) -> usize {
        if let Some(t) = self.sessions[s].txn {
            return t;
        }
        // REPEATABLE READ one time in three; its snapshot is taken at its first statement,
        // which may come well before its first claim.
        let rr = self.rand(3) == 0;
        let snap = (rr && self.rand(2) == 0).then_some(self.clock);
        self.txns.push(Txn {
            rr,
            snap,
            ..Txn::default()
        });
        let t = self.txns.len() - 1;
        self.sessions[s].txn = Some(t);
        t
    }

    /// The snapshot a statement of transaction `t` reads with.
    fn snapshot(&mut self, t: usize) -> u64 {
        if self.txns[t].rr {
            *self.txns[t].snap.get_or_insert(self.clock)
        } else {
            self.clock
        }
    }

    /// What transaction `t` sees of message `m` with snapshot `snap`.
    fn sees(&self, t: usize, m: usize, snap: u64) -> St {
        match self.msgs[m].pending {
            Some((o, st)) if o == t => st,
            _ => self.msgs[m].at(snap),
        }
    }

    fn locked_by_other(&self, t: usize, m: usize) -> bool {
        self.msgs[m].pending.is_some_and(|(o, _)| o != t)
    }

    fn set(&mut self, t: usize, m: usize, st: St) {
        self.set_vt(t, m, st, 0);
    }

    fn set_vt(&mut self, t: usize, m: usize, st: St, vt: i64) {
        let before = (self.msgs[m].pending, self.msgs[m].pending_vt);
        self.txns[t].changes.push((m, before.0, before.1));
        self.msgs[m].pending = Some((t, st));
        self.msgs[m].pending_vt = vt;
    }

    fn live(&self, m: usize) -> bool {
        let msg = &self.msgs[m];
        msg.seq == self.seqs[msg.queue as usize]
    }

    fn step(&mut self) {
        self.now += self.rand(3) as i64 * UNIT / 2;
        // One session of each case is slow (picked one time in ten when drawn): its windows,
        // between a claim's note, its scan, its end and its transaction's end, stay open
        // while the others go through whole transactions, PREPAREs and thaws.
        let mut s = self.rand(SESSIONS);
        if s == self.slow && self.rand(10) != 0 {
            s = (s + 1 + self.rand(SESSIONS - 1)) % SESSIONS;
        }
        if let Some(end) = self.sessions[s].ending.take() {
            self.callbacks(s, end);
            return;
        }
        if let Some((q, from)) = self.sessions[s].claim.take() {
            self.scan(s, q, from);
            return;
        }
        if let Some(qty) = self.sessions[s].claim_end.take() {
            self.end_claim(s, qty);
            return;
        }
        if let Some((q, seq)) = self.sessions[s].recompute.take() {
            self.recompute(s, q, seq);
            return;
        }
        let open = self.sessions[s].txn.is_some();
        // Sends are 1 to 5 in 20 of the steps, as the case draws: some cases keep their
        // queues full, others drain them (and claims come back empty).
        let r = self.rand(20);
        if r < self.sends {
            self.send(s);
            return;
        }
        match r {
            0..=6 => self.claim_begin(s),
            7 | 8 => self.probe(s),
            9 => self.archive(s),
            10 => self.nack(s),
            11 if open => self.savepoint(s),
            12 if open => self.rollback_to(s),
            13 | 14 if open => self.end(s, true),
            15 if open => self.end(s, false),
            16 if open => self.prepare(s),
            11..=13 => self.finish_prepared(s),
            14..=16 => self.maintain_thaw(),
            19 if self.rand(8) == 0 => self.drop_queue(s),
            _ => {}
        }
    }

    fn send(&mut self, s: usize) {
        let t = self.txn(s);
        let q = self.rand(QUEUES as usize) as i32;
        let seq = self.seqs[q as usize];
        let id = self.next_id;
        self.next_id += 1;
        let key = Key::of(self.rand(3) as i16, id);
        self.msgs.push(Msg {
            queue: q,
            seq,
            key,
            versions: Vec::new(),
            vts: Vec::new(),
            pending: None,
            pending_vt: 0,
            due_by: None,
            ready_by: None,
        });
        let m = self.msgs.len() - 1;
        if self.rand(4) == 0 {
            // A send with a delay.
            let vt = self.now + 1 + self.rand(6) as i64 * UNIT;
            self.set_vt(t, m, St::Delayed, vt);
            self.txns[t].x.due_at(q, seq, vt);
        } else {
            self.set(t, m, St::Ready);
            self.txns[t].x.ready(q, seq, key);
        }
        self.trace.push(format!("s{s} t{t} send q{q} {key:?}"));
    }

    fn claim_begin(&mut self, s: usize) {
        let t = self.txn(s);
        if self.txns[t].rr {
            self.snapshot(t);
        }
        let q = self.rand(QUEUES as usize) as i32;
        let seq = self.seqs[q as usize];
        self.token += 1;
        let ctx = self.ctx(s);
        let token = self.token;
        let from = claim_begin(&mut self.t.tab(), &mut self.txns[t].x, ctx, q, seq, token);
        // A claim scans past none of its own transaction's ready messages.
        for m in &self.msgs {
            if m.queue == q && m.seq == seq && m.pending == Some((t, St::Ready)) && m.key <= from {
                self.own_missed = Some(format!(
                    "q{q}: the claim's scan starts at {from:?}, past its own ready message {:?}",
                    m.key
                ));
            }
        }
        self.sessions[s].claim = Some((q, from));
        self.trace
            .push(format!("s{s} t{t} claim_begin q{q} from {from:?}"));
    }

    /// The claim's statement: its snapshot, the scan from `from` with SKIP LOCKED, the span
    /// and the end.
    fn scan(&mut self, s: usize, q: i32, from: Key) {
        let t = self.sessions[s].txn.expect("a claim is in a transaction");
        let snap = self.snapshot(t);
        let qty = 1 + self.rand(3) as i64;
        let mut cands: Vec<usize> = (0..self.msgs.len())
            .filter(|&m| self.live(m) && self.msgs[m].queue == q && self.msgs[m].key > from)
            .filter(|&m| self.sees(t, m, snap) == St::Ready)
            .collect();
        cands.sort_by_key(|&m| self.msgs[m].key);
        let mut taken = Vec::new();
        for m in cands {
            if taken.len() as i64 >= qty {
                break;
            }
            if self.locked_by_other(t, m) {
                continue;
            }
            let own = self.msgs[m].pending.is_some_and(|(o, _)| o == t);
            if !own && self.msgs[m].latest().0 > snap {
                if self.txns[t].rr {
                    // could not serialize access due to concurrent update: the statement fails
                    // and the transaction aborts.
                    self.trace
                        .push(format!("s{s} t{t} claim q{q}: serialization failure"));
                    self.abort_visible(s, t);
                    return;
                }
                // READ COMMITTED re-checks the row's latest version.
                if self.msgs[m].latest().1 != St::Ready {
                    continue;
                }
            }
            let vt = self.now + (1 + self.rand(6) as i64) * UNIT;
            self.set_vt(t, m, St::Leased, vt);
            let (mq, mseq) = (self.msgs[m].queue, self.msgs[m].seq);
            self.txns[t].x.due_at(mq, mseq, vt);
            taken.push(m);
        }
        if let (Some(&a), Some(&b)) = (taken.first(), taken.last()) {
            let (first, last) = (self.msgs[a].key, self.msgs[b].key);
            claim_span(&mut self.txns[t].x, first, last, taken.len() as i64);
        }
        self.sessions[s].claim_end = Some(qty);
        let keys: Vec<Key> = taken.iter().map(|&m| self.msgs[m].key).collect();
        self.trace.push(format!(
            "s{s} t{t} claim q{q} snap {snap} qty {qty}: {keys:?}"
        ));
    }

    /// `claim_end`, a step after the scan (other sessions act in between).
    fn end_claim(&mut self, s: usize, qty: i64) {
        let t = self.sessions[s].txn.expect("a claim is in a transaction");
        let ctx = self.ctx(s);
        if let Some(empty) = claim_end(&mut self.txns[t].x, ctx, qty) {
            end_empty(&mut self.t.tab(), ctx, empty);
        }
        self.trace.push(format!("s{s} t{t} claim_end"));
    }

    /// A verb on one row that is not a claim (archive, delete, nack, expiry): the row's latest
    /// version, waited for if locked (here: skipped), as READ COMMITTED does; a REPEATABLE READ
    /// transaction only when the row has not changed since its snapshot.
    fn pick(&mut self, t: usize, want: St) -> Option<usize> {
        let snap = self.snapshot(t);
        let rr = self.txns[t].rr;
        let cands: Vec<usize> = (0..self.msgs.len())
            .filter(|&m| self.live(m) && !self.locked_by_other(t, m))
            .filter(|&m| {
                let own = self.msgs[m].pending.filter(|p| p.0 == t).map(|p| p.1);
                match own {
                    Some(st) => st == want,
                    None => {
                        let (at, st) = self.msgs[m].latest();
                        st == want && (!rr || at <= snap)
                    }
                }
            })
            .collect();
        (!cands.is_empty()).then(|| cands[self.rand(cands.len())])
    }

    fn archive(&mut self, s: usize) {
        let t = self.txn(s);
        let want = if self.rand(3) == 0 {
            St::Ready
        } else {
            St::Leased
        };
        let Some(m) = self.pick(t, want) else { return };
        let (q, seq) = (self.msgs[m].queue, self.msgs[m].seq);
        self.txns[t].x.touch(q, seq);
        self.set(t, m, St::Gone);
        self.trace.push(format!(
            "s{s} t{t} archive {:?} ({want:?})",
            self.msgs[m].key
        ));
    }

    /// A nack, or the worker's expiry of a lease: the message is ready again.
    fn nack(&mut self, s: usize) {
        let t = self.txn(s);
        let Some(m) = self.pick(t, St::Leased) else {
            return;
        };
        let (q, seq, key) = (self.msgs[m].queue, self.msgs[m].seq, self.msgs[m].key);
        self.txns[t].x.touch(q, seq);
        if self.rand(2) == 0 {
            self.txns[t].x.ready(q, seq, key);
            self.set(t, m, St::Ready);
            self.trace.push(format!("s{s} t{t} nack {key:?}"));
        } else {
            // A retry after a backoff.
            let vt = self.now + (1 + self.rand(6) as i64) * UNIT;
            self.txns[t].x.due_at(q, seq, vt);
            self.set_vt(t, m, St::Delayed, vt);
            self.trace
                .push(format!("s{s} t{t} nack {key:?} retry at {vt}"));
        }
    }

    /// A read's probes, as `_read` runs them: `due_begin` (the shell's three steps), then, unless
    /// it says skip, lease expiry and promotion of what is due at `now` (in the reader's
    /// transaction), then, for a recompute, `due_end` at the session's next step with the
    /// minimum vt a new snapshot finds (one time in five it never comes: the transaction ends
    /// with the recompute unfinished).
    fn probe(&mut self, s: usize) {
        let t = self.txn(s);
        if self.txns[t].rr {
            self.snapshot(t);
        }
        let q = self.rand(QUEUES as usize) as i32;
        let seq = self.seqs[q as usize];
        let ctx = self.ctx(s);
        let now = self.now;
        let r = if self.txns[t].x.own_due(q, seq).is_some_and(|vt| vt <= now) {
            self.txns[t].x.touch(q, seq);
            Probe::Probe
        } else if due_quick(&self.t.view(), ctx, q, seq, now, now) {
            Probe::Skip
        } else {
            let r = due_begin(&mut self.t.tab(), ctx, q, seq, now, now);
            note_probe(&mut self.txns[t].x, q, seq, r);
            r
        };
        self.trace
            .push(format!("s{s} t{t} due_begin q{q} at {now}: {r:?}"));
        if r == Probe::Skip {
            return;
        }
        let snap = self.snapshot(t);
        let rr = self.txns[t].rr;
        let due: Vec<usize> = (0..self.msgs.len())
            .filter(|&m| self.live(m) && self.msgs[m].queue == q && !self.locked_by_other(t, m))
            .filter(|&m| {
                let (st, vt) = match self.msgs[m].pending.filter(|p| p.0 == t) {
                    Some((_, st)) => (st, self.msgs[m].pending_vt),
                    None => {
                        let (at, st) = self.msgs[m].latest();
                        if rr && at > snap {
                            return false;
                        }
                        (st, self.msgs[m].latest_vt())
                    }
                };
                matches!(st, St::Leased | St::Delayed) && vt <= now
            })
            .collect();
        for m in due {
            let key = self.msgs[m].key;
            self.txns[t].x.ready(q, seq, key);
            self.set(t, m, St::Ready);
            self.trace
                .push(format!("s{s} t{t} probe makes {key:?} ready"));
        }
        if r == Probe::Recompute && self.rand(5) != 0 {
            self.sessions[s].recompute = Some((q, seq));
        }
    }

    /// A recompute's end: the minimum vt of the queue's leases and delays in a new snapshot
    /// (its own transaction's changes included), published with `due_end`.
    fn recompute(&mut self, s: usize, q: i32, seq: u32) {
        let t = self.sessions[s]
            .txn
            .expect("a recompute is in a transaction");
        let snap = self.snapshot(t);
        let next = (0..self.msgs.len())
            .filter(|&m| self.live(m) && self.msgs[m].queue == q)
            .filter_map(|m| {
                let (st, vt) = match self.msgs[m].pending.filter(|p| p.0 == t) {
                    Some((_, st)) => (st, self.msgs[m].pending_vt),
                    None => {
                        let v = &self.msgs[m];
                        let i = v.versions.iter().rposition(|x| x.0 <= snap)?;
                        (v.versions[i].1, v.vts[i])
                    }
                };
                matches!(st, St::Leased | St::Delayed).then_some(vt)
            })
            .min();
        let ctx = self.ctx(s);
        due_end(&mut self.t.tab(), &mut self.txns[t].x, ctx, q, seq, next);
        self.trace.push(format!("s{s} t{t} due_end q{q}: {next:?}"));
    }

    fn savepoint(&mut self, s: usize) {
        let t = self.sessions[s].txn.unwrap();
        let at = self.txns[t].changes.len();
        self.txns[t].savepoints.push(at);
        self.trace.push(format!("s{s} t{t} savepoint"));
    }

    /// ROLLBACK TO SAVEPOINT (then RELEASE): the rows go back now, the callbacks next.
    fn rollback_to(&mut self, s: usize) {
        let t = self.sessions[s].txn.unwrap();
        let Some(at) = self.txns[t].savepoints.pop() else {
            return;
        };
        let e = self.event();
        while self.txns[t].changes.len() > at {
            let (m, before, before_vt) = self.txns[t].changes.pop().unwrap();
            self.msgs[m].pending = before;
            self.msgs[m].pending_vt = before_vt;
            match self.msgs[m].latest().1 {
                St::Ready => self.msgs[m].ready_by = Some(e),
                St::Leased | St::Delayed => self.msgs[m].due_by = Some(e),
                _ => {}
            }
        }
        self.sessions[s].ending = Some(End::SubAbort(e));
        self.trace
            .push(format!("s{s} t{t} rollback to savepoint (event {e})"));
    }

    fn end(&mut self, s: usize, commit: bool) {
        let t = self.sessions[s].txn.unwrap();
        if commit {
            self.clock += 1;
            let e = self.event();
            let changes = std::mem::take(&mut self.txns[t].changes);
            for &(m, _, _) in &changes {
                if let Some((_, st)) = self.msgs[m].pending.filter(|p| p.0 == t) {
                    self.msgs[m].versions.push((self.clock, st));
                    let vt = self.msgs[m].pending_vt;
                    self.msgs[m].vts.push(vt);
                    self.msgs[m].pending = None;
                    if st == St::Ready {
                        self.msgs[m].ready_by = Some(e);
                    }
                    if matches!(st, St::Leased | St::Delayed) {
                        self.msgs[m].due_by = Some(e);
                    }
                }
            }
            self.sessions[s].ending = Some(End::Commit(e));
            self.trace.push(format!(
                "s{s} t{t} commit visible at {} (event {e})",
                self.clock
            ));
        } else {
            self.abort_visible(s, t);
        }
    }

    /// The abort's visible part: the transaction's rows are released.
    fn abort_visible(&mut self, s: usize, t: usize) {
        let e = self.event();
        let changes = std::mem::take(&mut self.txns[t].changes);
        for &(m, _, _) in &changes {
            if self.msgs[m].pending.is_some_and(|p| p.0 == t) {
                self.msgs[m].pending = None;
                match self.msgs[m].latest().1 {
                    St::Ready => self.msgs[m].ready_by = Some(e),
                    St::Leased | St::Delayed => self.msgs[m].due_by = Some(e),
                    _ => {}
                }
            }
        }
        self.sessions[s].claim = None;
        self.sessions[s].claim_end = None;
        self.sessions[s].recompute = None;
        self.sessions[s].ending = Some(End::Abort(e));
        self.trace
            .push(format!("s{s} t{t} abort visible (event {e})"));
    }

    fn callbacks(&mut self, s: usize, end: End) {
        let t = self.sessions[s].txn.unwrap();
        let ctx = self.ctx(s);
        match end {
            End::Commit(e) => {
                let x = std::mem::take(&mut self.txns[t].x);
                if commit_has_work(&x) {
                    commit(&mut self.t.tab(), &x, ctx, &mut |_| {});
                }
                self.published[e] = true;
                self.sessions[s].txn = None;
            }
            End::Abort(e) => {
                let x = std::mem::take(&mut self.txns[t].x);
                if abort_has_work(&x, false) {
                    abort(&mut self.t.tab(), &x, ctx, false);
                }
                self.published[e] = true;
                self.sessions[s].txn = None;
            }
            End::SubAbort(e) => {
                subabort(&mut self.t.tab(), &mut self.txns[t].x, ctx);
                self.published[e] = true;
            }
        }
        self.trace.push(format!("s{s} t{t} callbacks {end:?}"));
    }

    /// PREPARE TRANSACTION: its callbacks now; its rows stay locked by the prepared
    /// transaction, which another session finishes.
    fn prepare(&mut self, s: usize) {
        let t = self.sessions[s].txn.take().unwrap();
        let ctx = Ctx {
            snapshot: self.txns[t].rr,
            ..self.ctx(s)
        };
        let x = std::mem::take(&mut self.txns[t].x);
        if abort_has_work(&x, true) {
            abort(&mut self.t.tab(), &x, ctx, true);
        }
        self.txns[t].prepared = true;
        self.trace.push(format!("s{s} t{t} prepare"));
    }

    /// COMMIT PREPARED or ROLLBACK PREPARED: visible at once, with no callback here.
    fn finish_prepared(&mut self, s: usize) {
        let prepared: Vec<usize> = (0..self.txns.len())
            .filter(|&t| self.txns[t].prepared)
            .collect();
        if prepared.is_empty() {
            return;
        }
        let t = prepared[self.rand(prepared.len())];
        let commit = self.rand(2) == 0;
        if commit {
            self.clock += 1;
        }
        let changes = std::mem::take(&mut self.txns[t].changes);
        for &(m, _, _) in &changes {
            if let Some((_, st)) = self.msgs[m].pending.filter(|p| p.0 == t) {
                self.msgs[m].pending = None;
                if commit {
                    self.msgs[m].versions.push((self.clock, st));
                    let vt = self.msgs[m].pending_vt;
                    self.msgs[m].vts.push(vt);
                    self.msgs[m].due_by = None;
                }
                self.msgs[m].ready_by = None;
            }
        }
        self.txns[t].prepared = false;
        self.trace.push(format!(
            "s{s} {} prepared t{t}",
            if commit { "commit" } else { "rollback" }
        ));
    }

    /// maintain(): read the freeze count and look for prepared transactions; thaw at a later
    /// step if there were none.
    fn maintain_thaw(&mut self) {
        match self.thaw_seen.take() {
            None => {
                let seen = self.t.head.freezes;
                if !self.txns.iter().any(|t| t.prepared) {
                    self.thaw_seen = Some(seen);
                }
                self.trace.push(format!("worker looks (freezes {seen})"));
            }
            Some(seen) => {
                let ctx = Ctx {
                    db: DB,
                    pid: 99,
                    snapshot: false,
                };
                let done = thaw(&mut self.t.tab(), ctx, seen);
                self.trace.push(format!("worker thaws ({seen}): {done}"));
            }
        }
    }

    /// drop_queue and create_queue again, when nothing else uses the queue (drop_queue takes
    /// the queue's lock): its messages go, its entry is forgotten at the drop's commit, and the
    /// new queue is another incarnation.
    fn drop_queue(&mut self, s: usize) {
        let q = self.rand(QUEUES as usize) as i32;
        let seq = self.seqs[q as usize];
        let busy = self.txns.iter().any(|t| {
            t.changes.iter().any(|&(m, _, _)| self.msgs[m].queue == q)
                || t.x.claims.iter().any(|c| c.0.queue_id == q)
                || t.x.current.is_some_and(|c| c.queue_id == q)
                || t.x.ready.iter().any(|r| r.0 == q)
                || t.x.touched.iter().any(|r| r.0 == q)
        }) || self
            .sessions
            .iter()
            .any(|x| x.claim.is_some_and(|c| c.0 == q));
        if busy {
            return;
        }
        let mut x = Xact::default();
        x.touch(q, seq);
        x.forget.push(q);
        let ctx = self.ctx(s);
        commit(&mut self.t.tab(), &x, ctx, &mut |_| {});
        self.seqs[q as usize] = seq + 1;
        self.trace.push(format!("s{s} drop and re-create q{q}"));
    }

    /// The oracle.
    fn check(&self) -> Result<(), String> {
        if let Some(why) = &self.own_missed {
            return Err(why.clone());
        }
        for q in 0..QUEUES {
            let seq = self.seqs[q as usize];
            let Some(e) = self.t.view().get(DB, q, seq) else {
                continue;
            };
            for m in &self.msgs {
                if m.queue != q || m.seq != seq || m.latest().1 != St::Ready || m.pending.is_some()
                {
                    continue;
                }
                if m.ready_by.is_some_and(|ev| !self.published[ev]) {
                    continue;
                }
                if m.key <= e.mark {
                    return Err(format!(
                        "q{q}: the committed ready message {:?} is at or below the mark {:?}",
                        m.key, e.mark
                    ));
                }
            }
        }
        // The due time: no committed lease or delay whose commit has been published, and that
        // no open or prepared transaction holds, has a vt before its queue's due time, unless a
        // recompute is running.
        for q in 0..QUEUES {
            let seq = self.seqs[q as usize];
            let Some(e) = self.t.view().get(DB, q, seq) else {
                continue;
            };
            if e.due_busy != 0 {
                continue;
            }
            for m in &self.msgs {
                // A row another transaction holds is left out: that transaction touched the
                // queue, so its abort resets the due time, and its commit changes the row.
                if m.queue != q
                    || m.seq != seq
                    || !matches!(m.latest().1, St::Leased | St::Delayed)
                    || m.pending.is_some()
                {
                    continue;
                }
                if m.due_by.is_some_and(|ev| !self.published[ev]) {
                    continue;
                }
                if m.latest_vt() < e.due {
                    return Err(format!(
                        "q{q}: the committed {:?} message {:?} has vt {} before the due time {}",
                        m.latest().1,
                        m.key,
                        m.latest_vt(),
                        e.due
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ends every session's work (each open transaction commits or aborts, every prepared one
    /// is finished), then checks that no watch slot is left taken.
    fn settle(&mut self) -> Result<(), String> {
        for s in 0..SESSIONS {
            if let Some(end) = self.sessions[s].ending.take() {
                self.callbacks(s, end);
            }
            if let Some((q, from)) = self.sessions[s].claim.take() {
                self.scan(s, q, from);
                if let Some(end) = self.sessions[s].ending.take() {
                    self.callbacks(s, end);
                }
            }
            if let Some(qty) = self.sessions[s].claim_end.take() {
                self.end_claim(s, qty);
            }
            if let Some((q, seq)) = self.sessions[s].recompute.take() {
                self.recompute(s, q, seq);
            }
            if self.sessions[s].txn.is_some() {
                let commit = self.rand(2) == 0;
                self.end(s, commit);
                let end = self.sessions[s].ending.take().unwrap();
                self.callbacks(s, end);
            }
            self.check()?;
        }
        while self.txns.iter().any(|t| t.prepared) {
            self.finish_prepared(0);
            self.check()?;
        }
        for e in self
            .t
            .entries
            .iter()
            .filter(|e| e.dboid == DB && e.queue_id != 0)
        {
            if let Some(w) = e.watch.iter().find(|w| w.owner != 0) {
                return Err(format!(
                    "q{}: a watch slot is left taken by {}",
                    e.queue_id, w.owner
                ));
            }
        }
        Ok(())
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn neither_the_cursor_nor_the_due_time_ever_passes_a_committed_message() {
    let seed = env("PGFLOW_MODEL_SEED", 1);
    let cases = env("PGFLOW_MODEL_CASES", 3000);
    let steps = env("PGFLOW_MODEL_STEPS", 400);
    let mut claims = 0usize;
    for case in 0..cases {
        let mut w = World::new(seed.wrapping_add(case));
        let mut outcome = Ok(());
        for _ in 0..steps {
            w.step();
            outcome = w.check();
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = w.settle();
        }
        if let Err(why) = outcome {
            let tail: Vec<&String> = w.trace.iter().rev().take(40).rev().collect();
            panic!(
                "model check failed: {why}\nseed {seed}, case {case} (PGFLOW_MODEL_SEED={} PGFLOW_MODEL_CASES=1 reproduces it); last steps:\n{}",
                seed.wrapping_add(case),
                tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
            );
        }
        claims += w.trace.iter().filter(|s| s.contains(" claim q")).count();
    }
    // The model exercised what it claims to: claims that took messages happened.
    assert!(
        claims > (cases as usize) * 10,
        "only {claims} claims in {cases} cases"
    );
}
