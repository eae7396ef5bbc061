//! The background workers, seen from clients: they do the maintenance jobs, follow the
//! extension and the database through their lifecycle, obey the settings, and one database's
//! failing worker never stops another's.
//!
//! Workers are shared by the whole server, so these tests run one at a time (a mutex), each in
//! databases of its own. Waiting is polling on worker_status() with a deadline: the worker is
//! another process, and nothing it does can wake the test.
use std::sync::Mutex;

use pgflow_e2e::{connect, connect_to, eventually};
use postgres::Client;

static SERIAL: Mutex<()> = Mutex::new(());

const DEADLINE: u64 = 30;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fresh_database(admin: &mut Client, name: &str) {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
}

/// A fresh database with pgflow, once its worker runs; a connection to it.
fn database_with_worker(admin: &mut Client, db: &str) -> Client {
    fresh_database(admin, db);
    let mut c = connect_to(db);
    c.batch_execute("CREATE EXTENSION pgflow").unwrap();
    assert!(
        eventually(admin, &state_is(db, "running"), DEADLINE),
        "worker never started"
    );
    c
}

fn state_is(db: &str, state: &str) -> String {
    format!(
        "SELECT coalesce((SELECT state = '{state}' FROM pgflow.worker_status() WHERE datname = '{db}'), false)"
    )
}

fn worker_pid(admin: &mut Client, db: &str) -> Option<i32> {
    admin
        .query_opt(
            "SELECT pid FROM pgflow.worker_status() WHERE datname = $1",
            &[&db],
        )
        .unwrap()
        .and_then(|r| r.get(0))
}

#[test]
fn the_worker_expires_leases_retries_with_backoff_dead_letters_and_prunes() {
    let _g = serial();
    let mut admin = connect();
    let db = "pgflow_w_jobs";
    let mut c = database_with_worker(&mut admin, db);

    c.batch_execute(
        "SELECT pgflow.create_queue('jobs', max_retries => 1, retry_delay => '300 ms',
                                    retry_jitter => 0);
         SELECT pgflow.create_queue('audit', archive_retention => '1 ms');",
    )
    .unwrap();
    let id: i64 = c
        .query_one("SELECT pgflow.send('jobs', '{\"n\": 1}')", &[])
        .unwrap()
        .get(0);
    // A consumer takes it with a short lease and never comes back.
    let got: i64 = c
        .query_one("SELECT msg_id FROM pgflow.read('jobs', '100 ms')", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, id);

    // Nobody else reads or calls maintain(): only the worker can move it. First the lease
    // expires into a retry scheduled 300 ms later, with the error recorded...
    let retried = format!(
        "SELECT EXISTS (SELECT 1 FROM pgflow.message
          WHERE msg_id = {id} AND read_ct = 1 AND state IN ('d', 'r')
            AND errors -> 0 ->> 'error' = 'visibility timeout expired')"
    );
    assert!(
        eventually(&mut c, &retried, DEADLINE),
        "the lease never expired"
    );
    // ...then the worker makes it ready ('r') when the backoff has passed.
    let ready =
        format!("SELECT EXISTS (SELECT 1 FROM pgflow.message WHERE msg_id = {id} AND state = 'r')");
    assert!(
        eventually(&mut c, &ready, DEADLINE),
        "the retry never came due"
    );
    let vt_after_enqueue: bool = c
        .query_one(
            "SELECT vt >= enqueued_at + interval '300 ms' FROM pgflow.message WHERE msg_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(vt_after_enqueue, "the retry waited for its backoff");

    // Second delivery, lease lost again: max_retries 1 is used up, so the worker dead-letters it.
    let got: i64 = c
        .query_one("SELECT msg_id FROM pgflow.read('jobs', '100 ms')", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, id);
    assert!(
        eventually(
            &mut c,
            "SELECT dlq_length = 1 FROM pgflow.metrics('jobs')",
            DEADLINE
        ),
        "never dead-lettered"
    );
    let reason: String = c
        .query_one("SELECT reason FROM pgflow.dlq_list('jobs')", &[])
        .unwrap()
        .get(0);
    assert!(
        reason.starts_with("visibility timeout expired after 2 deliveries"),
        "{reason}"
    );

    // The archive is pruned past its retention.
    c.batch_execute(
        "SELECT pgflow.send('audit', '{\"n\": 2}');
         SELECT pgflow.archive('audit', (SELECT msg_id FROM pgflow.read('audit')));",
    )
    .unwrap();
    assert!(
        eventually(
            &mut c,
            "SELECT archive_length = 0 AND total_archived = 1 FROM pgflow.metrics('audit')",
            DEADLINE
        ),
        "the archive was never pruned"
    );

    // The worker commits a round before it adds the round's counts to its status: wait for them.
    assert!(eventually(
        &mut admin,
        &format!("SELECT pruned >= 1 FROM pgflow.worker_status() WHERE datname = '{db}'"),
        DEADLINE
    ));
    let row = admin
        .query_one(
            "SELECT expired, promoted, pruned, ticks FROM pgflow.worker_status() WHERE datname = $1",
            &[&db],
        )
        .unwrap();
    let (expired, promoted, pruned): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (expired, promoted, pruned),
        (2, 1, 1),
        "the worker counted its own work"
    );
    drop(c);
    admin.batch_execute(&format!("DROP DATABASE {db}")).unwrap();
}

#[test]
fn the_worker_follows_the_extension_and_survives_database_commands() {
    let _g = serial();
    let mut admin = connect();
    let (db, renamed, copy) = ("pgflow_w_life", "pgflow_w_life2", "pgflow_w_copy");
    for d in [db, renamed, copy] {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"))
            .unwrap();
    }
    let mut c = database_with_worker(&mut admin, db);
    let pid = worker_pid(&mut admin, db).expect("a running worker has a pid");
    // The slot says running as soon as the worker attaches; pg_stat_activity shows it (and its
    // database) once it has connected.
    assert!(
        eventually(
            &mut admin,
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid}
                                   AND backend_type = 'pgflow worker' AND datname = '{db}')"
            ),
            DEADLINE
        ),
        "pg_stat_activity shows the worker with its database"
    );

    // DROP EXTENSION: the worker notices and stops; CREATE EXTENSION brings it back.
    c.batch_execute("SELECT pgflow.create_queue('before_drop')")
        .unwrap();
    c.batch_execute("DROP EXTENSION pgflow").unwrap();
    assert!(
        eventually(&mut admin, &state_is(db, "idle"), DEADLINE),
        "still running without the extension"
    );
    // Idle is published just before the process exits.
    assert!(
        eventually(
            &mut admin,
            &format!("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid})"),
            DEADLINE
        ),
        "the old worker is gone"
    );
    c.batch_execute("CREATE EXTENSION pgflow").unwrap();
    // The re-created extension works from a clean slate (no leftover per-queue sequences).
    c.batch_execute(
        "SELECT pgflow.create_queue('after_drop'); SELECT pgflow.send('after_drop', '{}')",
    )
    .expect("a queue in the re-created extension");
    assert!(
        eventually(&mut admin, &state_is(db, "running"), DEADLINE),
        "no worker after CREATE EXTENSION"
    );
    drop(c);

    // Commands that need the database to themselves succeed although a worker is connected.
    admin
        .batch_execute(&format!("ALTER DATABASE {db} RENAME TO {renamed}"))
        .expect("RENAME with a worker connected");
    assert!(
        eventually(&mut admin, &state_is(renamed, "running"), DEADLINE),
        "no worker after RENAME"
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {renamed}"))
        .expect("CREATE DATABASE ... TEMPLATE with a worker connected");
    assert!(
        eventually(&mut admin, &state_is(renamed, "running"), DEADLINE),
        "no worker back after the copy"
    );
    // The copy has the extension too; the launcher finds it at its next scan.
    assert!(
        eventually(&mut admin, &state_is(copy, "running"), DEADLINE),
        "the copy got no worker"
    );

    // A DROP DATABASE that fails (a client is still connected) leaves the worker running again.
    let blocker = connect_to(renamed);
    let err = admin
        .batch_execute(&format!("DROP DATABASE {renamed}"))
        .expect_err("DROP DATABASE with a client connected");
    assert_eq!(err.code(), Some(&postgres::error::SqlState::OBJECT_IN_USE));
    assert!(
        eventually(&mut admin, &state_is(renamed, "running"), DEADLINE),
        "no worker after a failed DROP"
    );
    drop(blocker);

    // A plain DROP DATABASE (no FORCE) succeeds and the slot goes.
    for d in [renamed, copy] {
        admin
            .batch_execute(&format!("DROP DATABASE {d}"))
            .unwrap_or_else(|e| panic!("DROP DATABASE {d} with a worker connected: {e}"));
        let gone = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM pgflow.worker_status() WHERE datname = '{d}')"
        );
        assert!(eventually(&mut admin, &gone, DEADLINE), "{d} still listed");
    }
}

#[test]
fn settings_stop_and_start_workers_on_reload() {
    let _g = serial();
    let mut admin = connect();
    let (a, b) = ("pgflow_w_set_a", "pgflow_w_set_b");
    for d in [a, b] {
        fresh_database(&mut admin, d);
        connect_to(d)
            .batch_execute("CREATE EXTENSION pgflow")
            .unwrap();
        assert!(eventually(&mut admin, &state_is(d, "running"), DEADLINE));
    }
    let reload = |admin: &mut Client, setting: &str| {
        admin.batch_execute(setting).unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    };

    // The database filter: only b keeps a worker.
    reload(
        &mut admin,
        &format!("ALTER SYSTEM SET pgflow.databases = '{b}'"),
    );
    assert!(
        eventually(&mut admin, &state_is(a, "held"), DEADLINE),
        "a not stopped by the filter"
    );
    assert!(eventually(&mut admin, &state_is(b, "running"), DEADLINE));
    // The off switch stops every worker.
    reload(&mut admin, "ALTER SYSTEM SET pgflow.enabled = off");
    assert!(
        eventually(&mut admin, &state_is(b, "held"), DEADLINE),
        "b not stopped by the off switch"
    );
    reload(&mut admin, "ALTER SYSTEM RESET pgflow.enabled");
    reload(&mut admin, "ALTER SYSTEM RESET pgflow.databases");
    for d in [a, b] {
        assert!(
            eventually(&mut admin, &state_is(d, "running"), DEADLINE),
            "{d} not restarted"
        );
    }

    // Off for one database: its worker stops at its next start and stays stopped. A slot is
    // "running" from the moment its worker attaches, before it connects and reads the
    // database's settings; wait for a round after the start so that the worker below is one
    // that has read them (it would otherwise see the setting at its connection and go idle by
    // itself, with no pid left to terminate).
    let ticked = format!(
        "SELECT coalesce((SELECT state = 'running' AND last_tick_at >= started_at
                            FROM pgflow.worker_status() WHERE datname = '{a}'), false)"
    );
    assert!(eventually(&mut admin, &ticked, DEADLINE), "a never ticked");
    admin
        .batch_execute(&format!("ALTER DATABASE {a} SET pgflow.enabled = off"))
        .unwrap();
    let pid = worker_pid(&mut admin, a).unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(
        eventually(&mut admin, &state_is(a, "idle"), DEADLINE),
        "a still runs while disabled"
    );
    let detail: String = admin
        .query_one(
            "SELECT detail FROM pgflow.worker_status() WHERE datname = $1",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert_eq!(detail, "pgflow.enabled is off for this database");
    assert!(eventually(&mut admin, &state_is(b, "running"), DEADLINE));
    admin
        .batch_execute(&format!("ALTER DATABASE {a} RESET pgflow.enabled"))
        .unwrap();
    reload(&mut admin, "SELECT 1");
    assert!(
        eventually(&mut admin, &state_is(a, "running"), DEADLINE),
        "a not back after RESET + reload"
    );

    for d in [a, b] {
        admin.batch_execute(&format!("DROP DATABASE {d}")).unwrap();
    }
}

#[test]
fn a_failing_worker_never_stops_another_database_s_worker() {
    let _g = serial();
    let mut admin = connect();
    let (bad, good) = ("pgflow_w_bad", "pgflow_w_good");
    for d in [bad, good] {
        fresh_database(&mut admin, d);
        connect_to(d)
            .batch_execute("CREATE EXTENSION pgflow")
            .unwrap();
        assert!(eventually(&mut admin, &state_is(d, "running"), DEADLINE));
    }
    // Break one job in one database: every round there now fails.
    connect_to(bad)
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgflow.promote_delayed(now timestamptz DEFAULT NULL,
                                                              batch integer DEFAULT 1000)
             RETURNS bigint LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'injected failure'; END $$",
        )
        .unwrap();
    let ticks = |admin: &mut Client, d: &str| -> i64 {
        admin
            .query_one(
                "SELECT ticks FROM pgflow.worker_status() WHERE datname = $1",
                &[&d],
            )
            .unwrap()
            .get(0)
    };
    let restarted =
        format!("SELECT restarts >= 2 FROM pgflow.worker_status() WHERE datname = '{bad}'");
    assert!(
        eventually(&mut admin, &restarted, DEADLINE),
        "the failing worker was not restarted"
    );
    // While the other database's worker keeps failing, this one goes on ticking.
    let good_then = ticks(&mut admin, good);
    assert!(
        eventually(
            &mut admin,
            &format!(
                "SELECT ticks > {good_then} FROM pgflow.worker_status() WHERE datname = '{good}'"
            ),
            DEADLINE
        ),
        "the healthy worker stopped ticking"
    );
    assert!(eventually(&mut admin, &state_is(good, "running"), DEADLINE));

    for d in [bad, good] {
        admin.batch_execute(&format!("DROP DATABASE {d}")).unwrap();
    }
}

/// Session leases: when the session that read a message ends (a consumer that crashed or lost
/// its connection), the worker gives the message back as a failed delivery within a tick,
/// long before its one-hour lease; a live session's lease stays, tick after tick.
#[test]
fn the_worker_gives_back_the_session_leases_of_a_session_that_ended() {
    let _g = serial();
    let mut admin = connect();
    let db = "pgflow_w_session";
    let mut c = database_with_worker(&mut admin, db);
    c.batch_execute(
        "SELECT pgflow.create_queue('tied', visibility_timeout => '1 hour', retry_delay => '0',
                                    session_leases => true);
         SELECT pgflow.send('tied', '{\"n\": 1}');
         SELECT pgflow.send('tied', '{\"n\": 2}');",
    )
    .unwrap();
    let read_one = |client: &mut Client| -> (i64, i64) {
        let id: i64 = client
            .query_one("SELECT msg_id FROM pgflow.read('tied')", &[])
            .unwrap()
            .get(0);
        // A statement of its own: the read's statement sees the row as it was before.
        let holder: i64 = client
            .query_one(
                "SELECT holder FROM pgflow.message WHERE msg_id = $1 AND state = 'l'",
                &[&id],
            )
            .unwrap()
            .get(0);
        (id, holder)
    };
    // Two consumers, each with its own session; the first goes away.
    let mut gone = connect_to(db);
    let mut live = connect_to(db);
    let (gone_id, gone_key) = read_one(&mut gone);
    let (live_id, live_key) = read_one(&mut live);
    let gone_pid: i32 = gone
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let key_of_pid: i64 = live
        .query_one(
            "SELECT (pid::bigint << 32) | (floor(extract(epoch FROM backend_start))::bigint & 4294967295)
               FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(key_of_pid, live_key, "a lease names its reader's session");
    assert_ne!(gone_key, live_key);
    drop(gone);
    assert!(
        eventually(
            &mut admin,
            &format!("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {gone_pid})"),
            DEADLINE
        ),
        "the first consumer's backend never exited"
    );

    // Only the worker runs maintenance here: it fails the delivery (retry_delay 0) and the
    // message is deliverable again, with the reason recorded and counted as an expiry.
    let released = format!(
        "SELECT EXISTS (SELECT 1 FROM pgflow.message
          WHERE msg_id = {gone_id} AND read_ct = 1 AND state IN ('d', 'r')
            AND errors -> 0 ->> 'error' = 'lease holder disconnected')"
    );
    assert!(
        eventually(&mut c, &released, DEADLINE),
        "the ended session's lease was never given back"
    );
    let ticks_then: i64 = admin
        .query_one(
            "SELECT ticks FROM pgflow.worker_status() WHERE datname = $1",
            &[&db],
        )
        .unwrap()
        .get(0);
    // Deliverable again (a read may find it row-locked by the worker for a moment: retry).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(DEADLINE);
    let again = loop {
        let r = live
            .query_opt("SELECT msg_id FROM pgflow.read('tied')", &[])
            .unwrap();
        if let Some(r) = r {
            break r.get::<_, i64>(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never delivered again"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(again, gone_id, "the message was delivered again");

    // Three more rounds of the worker: the live session's leases are still its own.
    assert!(eventually(
        &mut admin,
        &format!(
            "SELECT ticks >= {} FROM pgflow.worker_status() WHERE datname = '{db}'",
            ticks_then + 3
        ),
        DEADLINE
    ));
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM pgflow.message WHERE state = 'l' AND holder = $1",
            &[&live_key],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 2, "a live session's leases stay");
    let still: bool = c
        .query_one(
            "SELECT read_ct = 1 AND errors IS NULL FROM pgflow.message WHERE msg_id = $1",
            &[&live_id],
        )
        .unwrap()
        .get(0);
    assert!(still);
    let expired: i64 = c
        .query_one("SELECT expired FROM pgflow.metrics('tied')", &[])
        .unwrap()
        .get(0);
    assert_eq!(expired, 1, "the statistics count it as an expired lease");
    drop(live);
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

/// Queue 'big' with 60,000 ready messages.
fn fill_big(c: &mut Client) {
    c.batch_execute(
        "SELECT pgflow.create_queue('big');
         SELECT pgflow.send_batch('big', array(SELECT jsonb_build_object('n', g)
                                                 FROM generate_series(1, 60000) g));",
    )
    .unwrap();
}

/// Queue 'big' works: a message sent to it is read back and archived.
fn big_works(c: &mut Client) {
    let id: i64 = c
        .query_one("SELECT pgflow.send('big', '{\"probe\": true}')", &[])
        .unwrap()
        .get(0);
    let got: i64 = c
        .query_one("SELECT msg_id FROM pgflow.read('big', '30 s')", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, id);
    let archived: bool = c
        .query_one("SELECT pgflow.archive('big', $1::int8)", &[&id])
        .unwrap()
        .get(0);
    assert!(archived);
}

/// Empties queue 'big' and vacuums: its indexes stay, over an empty heap, as a drain leaves them
/// once autovacuum has been. The indexes' bytes.
///
/// One VACUUM may leave the heap as it was: a worker's tick holding its snapshot at that moment
/// keeps the dead rows, or a lock taken meanwhile stops the truncation (seen once in CI). It is
/// repeated, a second apart, until the heap is small; the number of tries is not a time bound.
fn drain_big(c: &mut Client) -> i64 {
    c.batch_execute("SELECT pgflow.purge_queue('big')").unwrap();
    let mut tries = 0;
    loop {
        c.batch_execute("VACUUM pgflow.message").unwrap();
        let sizes = c
            .query_one(
                "SELECT pg_relation_size('pgflow.message'), pg_indexes_size('pgflow.message')",
                &[],
            )
            .unwrap();
        let (heap, idx): (i64, i64) = (sizes.get(0), sizes.get(1));
        if idx > 2 * 1024 * 1024 && idx > 4 * heap {
            return idx;
        }
        tries += 1;
        assert!(
            tries < 60,
            "setup: {idx} bytes of indexes over {heap} of heap after {tries} vacuums"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Index space after a drain: once the queue table's heap is back to nearly nothing (VACUUM
/// here, autovacuum in production) while its indexes keep the drain's pages, the worker rebuilds
/// them with REINDEX TABLE CONCURRENTLY, first dropping an invalid index a failed concurrent
/// build left behind; the indexes keep their names, come out valid and small, and every verb
/// works after.
#[test]
fn the_worker_rebuilds_the_indexes_a_drain_left_behind() {
    let _g = serial();
    let mut admin = connect();
    let db = "pgflow_w_reindex";
    let mut c = database_with_worker(&mut admin, db);
    fill_big(&mut c);
    // A failed concurrent index build (duplicates under a unique index) leaves an invalid
    // index named as REINDEX CONCURRENTLY's leftovers are; every write still maintains it.
    let failed = c.batch_execute(
        "CREATE UNIQUE INDEX CONCURRENTLY message_probe_ccnew ON pgflow.message (queue_id)",
    );
    assert!(failed.is_err(), "the probe index was expected to fail");
    let indexes = "SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname)
                                     FILTER (WHERE i.indisvalid), '{}'),
                          count(*) FILTER (WHERE NOT i.indisvalid),
                          coalesce(array_agg(c.oid::int8 ORDER BY c.relname)
                                     FILTER (WHERE i.indisvalid), '{}')
                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                    WHERE i.indrelid = 'pgflow.message'::regclass";
    let before = c.query_one(indexes, &[]).unwrap();
    let (names, invalid, oids): (Vec<String>, i64, Vec<i64>) =
        (before.get(0), before.get(1), before.get(2));
    assert_eq!(invalid, 1);
    let idx = drain_big(&mut c);

    // A snapshot held for over 30 s: a rebuild would wait for it (and keep autovacuum off the
    // table meanwhile), so none starts.
    let mut holder = connect_to(db);
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pgflow.queue")
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let held_long = format!(
        "SELECT now() - xact_start > '32 s' FROM pg_stat_activity WHERE pid = {holder_pid}"
    );
    assert!(eventually(&mut c, &held_long, 60));
    admin
        .batch_execute("ALTER SYSTEM SET pgflow.reindex_min_size = '1MB'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The worker looks every 10 s: a tick 11 s after the reload (by the server's clock) comes
    // after at least one look.
    let set_at: std::time::SystemTime = c.query_one("SELECT now()", &[]).unwrap().get(0);
    let looked = "SELECT last_tick_at > $1::timestamptz + interval '11 s'
                    FROM pgflow.worker_status() WHERE datname = $2";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !c
        .query_one(looked, &[&set_at, &db])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker stopped ticking"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let held = c.query_one(indexes, &[]).unwrap();
    assert_eq!(
        held.get::<_, Vec<i64>>(2),
        oids,
        "rebuilt under a held snapshot"
    );
    let detail: Option<String> = c
        .query_one(
            "SELECT detail FROM pgflow.worker_status() WHERE datname = $1",
            &[&db],
        )
        .unwrap()
        .get(0);
    assert_eq!(detail, None);
    holder.batch_execute("COMMIT").unwrap();
    drop(holder);
    let rebuilt = format!(
        "SELECT pg_indexes_size('pgflow.message') < {} AND NOT EXISTS (
                  SELECT FROM pg_index WHERE indrelid = 'pgflow.message'::regclass
                                         AND NOT indisvalid)
                AND (SELECT pid FROM pgflow.worker_status() WHERE datname = '{db}') IS NOT NULL
                AND (SELECT detail FROM pgflow.worker_status() WHERE datname = '{db}') IS NULL",
        idx / 4
    );
    let done = eventually(&mut c, &rebuilt, 120);
    admin
        .batch_execute("ALTER SYSTEM RESET pgflow.reindex_min_size")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(done, "the indexes were not rebuilt");
    let after = c.query_one(indexes, &[]).unwrap();
    let (names_after, invalid_after, oids_after): (Vec<String>, i64, Vec<i64>) =
        (after.get(0), after.get(1), after.get(2));
    assert_eq!(names_after, names, "the indexes keep their names");
    assert_eq!(invalid_after, 0);
    assert!(
        oids_after.iter().all(|o| !oids.contains(o)),
        "every index was rebuilt: {oids:?} then {oids_after:?}"
    );
    // The queue works on the new indexes.
    big_works(&mut c);
    drop(c);
    admin.batch_execute(&format!("DROP DATABASE {db}")).unwrap();
}

/// A rebuild that cannot get its locks gives up after a minute (the rebuilder's lock_timeout)
/// instead of keeping autovacuum and DDL off the table: the table keeps its valid indexes and
/// every verb works while it waits and after; worker_status says so, and the worker does not
/// try again within the hour, even once the lock is free.
#[test]
fn a_rebuild_that_cannot_get_its_locks_gives_up_and_waits_an_hour() {
    let _g = serial();
    let mut admin = connect();
    let db = "pgflow_w_reindex_wait";
    let mut c = database_with_worker(&mut admin, db);
    fill_big(&mut c);
    drain_big(&mut c);
    let valid = "SELECT array_agg(indexrelid::int8 ORDER BY indexrelid) FILTER (WHERE indisvalid),
                        count(*) FILTER (WHERE NOT indisvalid)
                   FROM pg_index WHERE indrelid = 'pgflow.message'::regclass";
    let row = c.query_one(valid, &[]).unwrap();
    let (oids, invalid): (Vec<i64>, i64) = (row.get(0), row.get(1));
    assert_eq!(invalid, 0);

    // A transaction holding the lock a writer holds on the table, but neither a snapshot nor a
    // transaction id: the horizon is free, so the rebuild starts, and then waits for it.
    let mut blocker = connect_to(db);
    let blocker_pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    blocker
        .batch_execute("BEGIN; LOCK TABLE pgflow.message IN ROW EXCLUSIVE MODE")
        .unwrap();
    let free = c
        .query_one(
            "SELECT backend_xmin IS NULL AND backend_xid IS NULL
               FROM pg_stat_activity WHERE pid = $1",
            &[&blocker_pid],
        )
        .unwrap();
    assert!(free.get::<_, bool>(0), "the blocker holds the horizon");
    admin
        .batch_execute("ALTER SYSTEM SET pgflow.reindex_min_size = '1MB'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let waiting = format!(
        "SELECT EXISTS (SELECT FROM pg_stat_activity
                         WHERE backend_type = 'pgflow reindex' AND datname = '{db}'
                           AND wait_event_type = 'Lock')"
    );
    assert!(
        eventually(&mut c, &waiting, 120),
        "the rebuild never waited"
    );
    let started: std::time::SystemTime = c
        .query_one(
            "SELECT backend_start FROM pg_stat_activity
              WHERE backend_type = 'pgflow reindex' AND datname = $1",
            &[&db],
        )
        .unwrap()
        .get(0);
    let detail = "SELECT coalesce(detail, '') FROM pgflow.worker_status() WHERE datname = $1";
    let d: String = c.query_one(detail, &[&db]).unwrap().get(0);
    assert!(
        d.starts_with("rebuilding the indexes of pgflow.message concurrently"),
        "{d}"
    );
    // Sends, reads and archives go on while the rebuild waits.
    big_works(&mut c);

    // It gives up once its lock wait has lasted a minute: not before (server clock), and the
    // worker says when it will try again.
    let failed = format!(
        "SELECT coalesce((SELECT detail LIKE 'the last index rebuild, of pgflow.message, did not finish%'
                            FROM pgflow.worker_status() WHERE datname = '{db}'), false)"
    );
    let gave_up = eventually(&mut c, &failed, 240);
    let after: bool = c
        .query_one(
            "SELECT now() >= $1::timestamptz + interval '60 s'
                AND NOT EXISTS (SELECT FROM pg_stat_activity
                                 WHERE backend_type = 'pgflow reindex' AND datname = $2)",
            &[&started, &db],
        )
        .unwrap()
        .get(0);
    let d: String = c.query_one(detail, &[&db]).unwrap().get(0);
    assert!(gave_up, "the rebuild never gave up: {d}");
    assert!(after, "it gave up before its lock wait lasted a minute");
    let next: f64 = d
        .split("comes in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no next try in: {d}"));
    assert!(next > 3000.0, "{d}");
    // The table keeps its valid indexes (the rebuild's invalid copies stay for the next one to
    // drop), and the rebuild's lock is gone: a VACUUM could take the table.
    let row = c.query_one(valid, &[]).unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), oids);
    assert!(row.get::<_, i64>(1) >= 1, "no invalid copy was left");
    c.batch_execute(
        "BEGIN; LOCK TABLE pgflow.message IN SHARE UPDATE EXCLUSIVE MODE NOWAIT; ROLLBACK",
    )
    .unwrap();

    // With the lock free, the worker's next looks (a tick 11 s after the release, by the
    // server's clock) start nothing: the next try is an hour away.
    blocker.batch_execute("COMMIT").unwrap();
    drop(blocker);
    let freed_at: String = c.query_one("SELECT now()::text", &[]).unwrap().get(0);
    let looked = format!(
        "SELECT last_tick_at > '{freed_at}'::timestamptz + interval '11 s'
           FROM pgflow.worker_status() WHERE datname = '{db}'"
    );
    let ticked = eventually(&mut c, &looked, 120);
    let row = c.query_one(valid, &[]).unwrap();
    let d: String = c.query_one(detail, &[&db]).unwrap().get(0);
    admin
        .batch_execute("ALTER SYSTEM RESET pgflow.reindex_min_size")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(ticked, "the worker stopped ticking");
    assert_eq!(row.get::<_, Vec<i64>>(0), oids, "rebuilt within the hour");
    assert!(d.starts_with("the last index rebuild"), "{d}");
    big_works(&mut c);
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

/// A dropped database's claim cursors go with it (issue #30). Eight databases of 150 used
/// queues each, made and dropped in turn, need 1,200 entries over time, more than the 1,024
/// the shared table holds: before, the entries of the dropped databases stayed, later
/// databases' queues got none, and their reads walked from the start again.
#[test]
fn a_dropped_databases_cursors_are_freed() {
    let _g = serial();
    let mut admin = connect();
    let count = "SELECT count(*) FROM pgflow.cursor_status() WHERE queue_name LIKE 'cq%'";
    for round in 0..8 {
        let db = format!("pgflow_w_cursors_{round}");
        fresh_database(&mut admin, &db);
        let mut c = connect_to(&db);
        c.batch_execute(
            "CREATE EXTENSION pgflow;
             SELECT count(pgflow.create_queue('cq' || i)) FROM generate_series(1, 150) i;
             SELECT count(pgflow.send('cq' || i, '{}')) FROM generate_series(1, 150) i;
             SELECT count(*) FROM generate_series(1, 150) i, pgflow.read('cq' || i);",
        )
        .unwrap();
        let n: i64 = c.query_one(count, &[]).unwrap().get(0);
        assert_eq!(n, 150, "round {round}: {n} of 150 queues have a cursor");
        drop(c);
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .unwrap();
    }
}
