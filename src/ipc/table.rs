//! The one way a per-queue entry in shared memory is found, made and freed, for the claim
//! cursor, the statistics and the NOTIFY throttle: open addressing keyed by (database, queue),
//! each table `pgflow.max_queues` entries long (`shm::Region`).
//!
//! - **Lookup:** linear probing from `slot_of(db, queue)`, stopping at a vacant entry.
//! - **Making an entry (the one eviction rule):** nothing live is ever evicted. A queue that
//!   finds no entry takes the first vacant or freed one of its chain, except that the last
//!   `reserve(len)` free entries (an eighth) go only to a database that holds fewer than that
//!   many: one database's thousands of queues fill the table up to there, and every other
//!   database can still get its share. A refusal is counted, in all and per database
//!   (`Census`), and shown by `worker_status()`, the endpoint and a WARNING once.
//! - **Freeing (the one cleanup path):** `remove` leaves a tombstone so that the chains
//!   through it stay whole, and turns it and the tombstones before it back into vacant
//!   entries when the next entry is vacant (then no chain passes through them), so a server
//!   that makes and drops queues for ever keeps short chains. Entries are freed when a queue's
//!   drop commits (`forget`), when DROP DATABASE, DROP EXTENSION or DROP SCHEMA pgflow runs or
//!   commits (`forget_db`), and by the launcher's sweep of databases that no longer exist
//!   (`sweep`), the backstop for every other way a database can go.
//!
//! Everything here runs at commit too (`xact.rs`): no allocation, no panic, nothing that can
//! raise, whatever the entries hold.

/// An entry of a keyed table. `Default` is a vacant entry.
pub trait Keyed: Copy + Default {
    /// (database oid, queue id): database 0 is vacant, queue 0 a freed entry (a tombstone).
    fn key(&self) -> (u32, i32);
    fn set_key(&mut self, db: u32, queue_id: i32);
}

/// Databases whose refusals are counted apart (more share the last counter).
pub const REFUSED_DBS: usize = 32;

/// Kept beside each table: live entries, and the refusals since the server started.
#[derive(Copy, Clone, Default)]
pub struct Census {
    pub live: usize,
    pub refused: u64,
    pub refused_by: [(u32, u64); REFUSED_DBS],
    /// Whether a worker has warned of the first refusal.
    pub warned: bool,
}

impl Census {
    fn refuse(&mut self, db: u32) {
        self.refused = self.refused.saturating_add(1);
        let i = self
            .refused_by
            .iter()
            .position(|r| r.0 == db)
            .or_else(|| self.refused_by.iter().position(|r| r.0 == 0))
            .unwrap_or(REFUSED_DBS - 1);
        self.refused_by[i].0 = db;
        self.refused_by[i].1 = self.refused_by[i].1.saturating_add(1);
    }

    /// Refusals of database `db`'s queues.
    pub fn refused_of(&self, db: u32) -> u64 {
        self.refused_by
            .iter()
            .find(|r| r.0 == db)
            .map_or(0, |r| r.1)
    }
}

/// The free entries kept for databases that hold fewer than this many.
pub const fn reserve(len: usize) -> usize {
    len / 8
}

/// Whether a database that holds `mine` entries may take one of `free` free ones.
pub const fn may_take(free: usize, mine: usize, reserve: usize) -> bool {
    free > reserve || (free > 0 && mine < reserve)
}

const TOMB_DB: u32 = u32::MAX;

fn live<E: Keyed>(e: &E) -> bool {
    let (db, q) = e.key();
    db != 0 && q != 0
}

fn vacant<E: Keyed>(e: &E) -> bool {
    e.key().0 == 0
}

/// Where a queue's chain starts.
fn slot_of(db: u32, queue_id: i32, len: usize) -> usize {
    (queue_id as u32 as usize)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(db as usize)
        % len
}

/// The entry of a queue, if it has one.
pub fn index<E: Keyed>(entries: &[E], db: u32, queue_id: i32) -> Option<usize> {
    let len = entries.len();
    if len == 0 || db == 0 || queue_id == 0 {
        return None;
    }
    let start = slot_of(db, queue_id, len);
    for i in 0..len {
        let idx = (start + i) % len;
        let e = &entries[idx];
        if e.key() == (db, queue_id) {
            return Some(idx);
        }
        if vacant(e) {
            return None;
        }
    }
    None
}

/// The entry of a queue, made (as `E::default()` with its key) when it has none: `(index,
/// made)`; None when refused (see the header), which is counted.
pub fn find_or_make<E: Keyed>(
    census: &mut Census,
    entries: &mut [E],
    db: u32,
    queue_id: i32,
) -> Option<(usize, bool)> {
    if let Some(i) = index(entries, db, queue_id) {
        return Some((i, false));
    }
    let len = entries.len();
    if len == 0 || db == 0 || queue_id == 0 {
        return None;
    }
    let free = len.saturating_sub(census.live);
    let reserve = reserve(len);
    if free <= reserve {
        let mine = entries
            .iter()
            .filter(|e| e.key().0 == db && live(*e))
            .count();
        if !may_take(free, mine, reserve) {
            census.refuse(db);
            return None;
        }
    }
    let start = slot_of(db, queue_id, len);
    let Some(idx) = (0..len)
        .map(|i| (start + i) % len)
        .find(|&i| !live(&entries[i]))
    else {
        census.refuse(db);
        return None;
    };
    let mut e = E::default();
    e.set_key(db, queue_id);
    entries[idx] = e;
    census.live += 1;
    Some((idx, true))
}

/// Frees entry `idx` (see the header).
pub fn remove<E: Keyed>(census: &mut Census, entries: &mut [E], idx: usize) {
    let len = entries.len();
    if idx >= len || !live(&entries[idx]) {
        return;
    }
    census.live = census.live.saturating_sub(1);
    let mut tomb = E::default();
    tomb.set_key(TOMB_DB, 0);
    entries[idx] = tomb;
    if !vacant(&entries[(idx + 1) % len]) {
        return;
    }
    let mut i = idx;
    for _ in 0..len {
        let e = &entries[i];
        if vacant(e) || live(e) {
            break;
        }
        entries[i] = E::default();
        i = (i + len - 1) % len;
    }
}

/// Frees a queue's entry, if it has one.
pub fn forget<E: Keyed>(census: &mut Census, entries: &mut [E], db: u32, queue_id: i32) {
    if let Some(i) = index(entries, db, queue_id) {
        remove(census, entries, i);
    }
}

/// Frees every entry of the databases for which `gone(db)` holds, and their refusal counters;
/// how many entries it freed.
pub fn forget_where<E: Keyed>(
    census: &mut Census,
    entries: &mut [E],
    gone: impl Fn(u32) -> bool,
) -> usize {
    for r in census
        .refused_by
        .iter_mut()
        .filter(|r| r.0 != 0 && gone(r.0))
    {
        *r = (0, 0);
    }
    let mut n = 0;
    for i in 0..entries.len() {
        if live(&entries[i]) && gone(entries[i].key().0) {
            remove(census, entries, i);
            n += 1;
        }
    }
    n
}

/// Frees every entry of a database.
pub fn forget_db<E: Keyed>(census: &mut Census, entries: &mut [E], db: u32) -> usize {
    forget_where(census, entries, |d| d == db)
}

/// Entries in use: of every database, and of `db`.
pub fn used<E: Keyed>(entries: &[E], db: u32) -> (usize, usize) {
    entries
        .iter()
        .filter(|e| live(*e))
        .fold((0, 0), |(all, mine), e| {
            (all + 1, mine + usize::from(e.key().0 == db))
        })
}

/// The live entries, with their index.
pub fn live_entries<E: Keyed>(entries: &[E]) -> impl Iterator<Item = (usize, &E)> {
    entries.iter().enumerate().filter(|(_, e)| live(*e))
}

/// The databases that hold entries (for the sweep; allocates, so never at commit).
pub fn databases<E: Keyed>(entries: &[E]) -> Vec<u32> {
    let mut dbs: Vec<u32> = live_entries(entries).map(|(_, e)| e.key().0).collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Copy, Clone, Default, Debug, PartialEq)]
    struct E {
        db: u32,
        q: i32,
        v: u64,
    }

    impl Keyed for E {
        fn key(&self) -> (u32, i32) {
            (self.db, self.q)
        }
        fn set_key(&mut self, db: u32, queue_id: i32) {
            self.db = db;
            self.q = queue_id;
        }
    }

    fn check(c: &Census, t: &[E]) {
        assert_eq!(c.live, used(t, 0).0, "the census counts the live entries");
        for (i, e) in live_entries(t) {
            assert_eq!(index(t, e.db, e.q), Some(i), "every live entry is found");
        }
    }

    #[test]
    fn entries_are_found_made_and_freed_and_chains_stay_whole() {
        let mut c = Census::default();
        let mut t = vec![E::default(); 64];
        for q in 1..=40 {
            let (i, made) = find_or_make(&mut c, &mut t, 7, q).unwrap();
            assert!(made);
            t[i].v = q as u64;
            assert_eq!(find_or_make(&mut c, &mut t, 7, q), Some((i, false)));
        }
        check(&c, &t);
        for q in (1..=40).step_by(3) {
            forget(&mut c, &mut t, 7, q);
            assert_eq!(index(&t, 7, q), None);
        }
        check(&c, &t);
        for q in (1..=40).filter(|q| (q - 1) % 3 != 0) {
            assert_eq!(t[index(&t, 7, q).unwrap()].v, q as u64);
        }
        // Everything freed: no tombstone is left behind.
        assert!(forget_db(&mut c, &mut t, 7) > 0);
        assert_eq!(c.live, 0);
        assert!(t.iter().all(|e| *e == E::default()), "all vacant again");
    }

    #[test]
    fn churn_never_fills_the_table_with_tombstones() {
        let mut c = Census::default();
        let mut t = vec![E::default(); 128];
        for q in 1..=2_000 {
            let (i, _) = find_or_make(&mut c, &mut t, 3, q).unwrap();
            t[i].v = q as u64;
            if q > 50 {
                forget(&mut c, &mut t, 3, q - 50);
            }
            check(&c, &t);
        }
        assert_eq!(c.live, 50);
        assert_eq!(c.refused, 0);
    }

    #[test]
    fn one_database_leaves_the_reserve_to_the_others_and_refusals_are_counted() {
        let mut c = Census::default();
        let mut t = vec![E::default(); 64];
        let r = reserve(64);
        let mut got = 0;
        for q in 1..=100 {
            if find_or_make(&mut c, &mut t, 1, q).is_some() {
                got += 1;
            }
        }
        assert_eq!(got, 64 - r, "one database stops at the reserve");
        assert_eq!(c.refused_of(1), (100 - got) as u64);
        for q in 1..=r as i32 {
            assert!(
                find_or_make(&mut c, &mut t, 2, q).is_some(),
                "another gets its share"
            );
        }
        assert!(
            find_or_make(&mut c, &mut t, 3, 1).is_none(),
            "the table is full"
        );
        assert_eq!(c.refused_of(3), 1);
        assert_eq!(c.refused, (100 - got) as u64 + 1);
        check(&c, &t);
        // The sweep frees the databases that are gone.
        assert_eq!(forget_where(&mut c, &mut t, |d| d == 1), got);
        assert_eq!(databases(&t), vec![2]);
        assert_eq!(
            c.refused_of(1),
            0,
            "a database gone takes its counter along"
        );
        assert!(find_or_make(&mut c, &mut t, 3, 1).is_some());
        check(&c, &t);
    }

    #[test]
    fn an_empty_table_refuses_without_panicking() {
        let mut c = Census::default();
        let mut t: Vec<E> = Vec::new();
        assert_eq!(find_or_make(&mut c, &mut t, 1, 1), None);
        assert_eq!(index(&t, 1, 1), None);
        forget(&mut c, &mut t, 1, 1);
    }
}
