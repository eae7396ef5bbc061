//! Delivery semantics over real connections: per-group order with many consumers, long-poll
//! reads woken by a commit or by a delayed message coming due, cancelling a wait, dedup across
//! concurrent producers, and throttled NOTIFY.
use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pgflow_e2e::{connect, eventually, fresh_queue};
use postgres::fallible_iterator::FallibleIterator;

#[test]
fn many_consumers_keep_each_group_in_order_and_never_run_two_of_a_group_at_once() {
    const GROUPS: i32 = 20;
    const PER_GROUP: i32 = 100;
    let queue = "sem_groups";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    // Interleave the groups in send order: g0#0, g1#0, ..., g0#1, ...
    admin
        .execute(
            "SELECT count(pgflow.send($1, jsonb_build_object('g', g, 'seq', s), group_key => 'g' || g))
               FROM generate_series(0, $3 - 1) s, generate_series(0, $2 - 1) g",
            &[&queue, &GROUPS, &PER_GROUP],
        )
        .unwrap();

    let consumers: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut c = connect();
                let mut seen: Vec<(i32, i32)> = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let rows = c
                        .query(
                            "SELECT msg_id, (message->>'g')::int, (message->>'seq')::int
                               FROM pgflow.read($1, '30 s', 5, wait => '200 ms')",
                            &[&queue],
                        )
                        .unwrap();
                    if rows.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    let mut groups: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
                    groups.sort_unstable();
                    groups.dedup();
                    assert_eq!(
                        groups.len(),
                        rows.len(),
                        "two messages of one group in one read"
                    );
                    seen.extend(
                        rows.iter()
                            .map(|r| (r.get::<_, i32>(1), r.get::<_, i32>(2))),
                    );
                    let n = c
                        .query("SELECT pgflow.archive($1, $2::bigint[])", &[&queue, &ids])
                        .unwrap()
                        .len();
                    assert_eq!(n, ids.len());
                }
                seen
            })
        })
        .collect();
    let mut total = 0;
    for h in consumers {
        total += h.join().unwrap().len();
    }
    assert_eq!(
        total,
        (GROUPS * PER_GROUP) as usize,
        "each message handled once"
    );

    // The archive order of each group is its send order: the next one could only be read once
    // the previous one's archive had committed.
    let rows = admin
        .query(
            "SELECT (message->>'g')::int, (message->>'seq')::int
               FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1 ORDER BY a.archived_at, a.msg_id",
            &[&queue],
        )
        .unwrap();
    let mut next: HashMap<i32, i32> = HashMap::new();
    for r in &rows {
        let (g, seq): (i32, i32) = (r.get(0), r.get(1));
        let expect = next.entry(g).or_insert(0);
        assert_eq!(seq, *expect, "group {g} out of order");
        *expect += 1;
    }
    assert_eq!(rows.len(), (GROUPS * PER_GROUP) as usize);
}

/// The pid of the backend `c` talks to.
fn pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// A query: is backend `pid` asleep in pgflow's wait (an Extension wait event, mid-statement)?
/// Each poll runs in its own transaction, so pg_stat_activity is read afresh.
fn is_waiting(pid: i32) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE pid = {pid} AND state = 'active' AND wait_event_type = 'Extension')"
    )
}

#[test]
fn a_waiting_read_returns_the_message_once_its_send_commits_and_not_before() {
    let queue = "sem_longpoll";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let mut reader = connect();
    let reader_pid = pid(&mut reader);
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let rows = reader
            .query(
                "SELECT msg_id FROM pgflow.read($1, '30 s', 1, wait => '60 s')",
                &[&queue],
            )
            .unwrap();
        tx.send(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
            .unwrap();
    });
    // The reader is asleep in its wait.
    let waiting = is_waiting(reader_pid);
    assert!(
        eventually(&mut admin, &waiting, 30),
        "the reader never started waiting"
    );

    let mut producer = connect();
    let mut t = producer.transaction().unwrap();
    let id: i64 = t
        .query_one(
            "SELECT pgflow.send($1, '{\"hop\": \"rollback_trigger\"}')",
            &[&queue],
        )
        .unwrap()
        .get(0);
    // Sent but not committed: the reader is still asleep and has returned nothing.
    assert!(eventually(&mut admin, &waiting, 30));
    assert!(
        rx.try_recv().is_err(),
        "the reader returned before the commit"
    );
    t.commit().unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the commit did not wake the reader");
    assert_eq!(got, vec![id]);
    h.join().unwrap();
}

#[test]
fn a_waiting_read_wakes_when_a_delayed_message_comes_due() {
    let queue = "sem_longpoll_delayed";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let mut reader = connect();
    let reader_pid = pid(&mut reader);
    let h = thread::spawn(move || {
        reader
            .query_one(
                "SELECT msg_id, clock_timestamp() AS returned_at
                   FROM pgflow.read($1, '30 s', 1, wait => '60 s')",
                &[&queue],
            )
            .map(|r| (r.get::<_, i64>(0), r.get::<_, std::time::SystemTime>(1)))
    });
    let waiting = is_waiting(reader_pid);
    assert!(eventually(&mut admin, &waiting, 30));
    // Sent with a due time: the commit wakes the reader, which finds nothing due yet and sleeps
    // until the message's due time, then takes it. Both sides of the check are the server's own
    // times: the due time the message was stored with, and the server's clock when read had
    // returned it, so no scheduling delay can flip it.
    let row = admin
        .query_one(
            "SELECT pgflow.send($1, '{\"scheduled\": true}', deliver_at => t.due) AS id, t.due
               FROM (SELECT clock_timestamp() + interval '300 ms' AS due) t",
            &[&queue],
        )
        .unwrap();
    let (id, due): (i64, std::time::SystemTime) = (row.get(0), row.get(1));
    let (got, returned_at) = h.join().unwrap().expect("the waiting read failed");
    assert_eq!(got, id);
    assert!(returned_at >= due, "delivered before it was due");
}

#[test]
fn a_waiting_read_is_cancelled_by_pg_cancel_backend_and_statement_timeout() {
    let queue = "sem_longpoll_cancel";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let mut reader = connect();
    let reader_pid = pid(&mut reader);
    let h = thread::spawn(move || {
        let e = reader
            .query(
                "SELECT * FROM pgflow.read($1, '30 s', 1, wait => '1 hour')",
                &[&queue],
            )
            .expect_err("a cancelled read");
        let code = e.code().cloned();
        // The session is usable afterwards, and statement_timeout interrupts a wait too.
        reader
            .batch_execute("SET statement_timeout = '200ms'")
            .unwrap();
        let e2 = reader
            .query(
                "SELECT * FROM pgflow.read($1, '30 s', 1, wait => '1 hour')",
                &[&queue],
            )
            .expect_err("a timed-out read");
        (code, e2.code().cloned())
    });
    let waiting = is_waiting(reader_pid);
    assert!(eventually(&mut admin, &waiting, 30));
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&reader_pid])
        .unwrap();
    let (c1, c2) = h.join().unwrap();
    assert_eq!(c1, Some(postgres::error::SqlState::QUERY_CANCELED));
    assert_eq!(c2, Some(postgres::error::SqlState::QUERY_CANCELED));
}

#[test]
fn concurrent_producers_with_one_dedup_key_enqueue_one_message() {
    let queue = "sem_dedup";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let producers: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                let mut c = connect();
                let id: i64 = c
                    .query_one(
                        "SELECT pgflow.send($1, jsonb_build_object('producer', $2::int), dedup_key => 'proposal-42')",
                        &[&queue, &i],
                    )
                    .unwrap()
                    .get(0);
                id
            })
        })
        .collect();
    let ids: Vec<i64> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        ids.iter().all(|&id| id == ids[0]),
        "every producer got the first id: {ids:?}"
    );
    let n: i64 = admin
        .query_one("SELECT queue_length FROM pgflow.metrics($1)", &[&queue])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn notify_is_throttled_and_the_last_send_is_always_announced() {
    let queue = "sem_notify";
    let mut admin = connect();
    admin
        .execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])
        .unwrap();
    admin
        .execute("SELECT pgflow.create_queue($1, notify => true)", &[&queue])
        .unwrap();
    let interval_ms: i64 = admin
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'pgflow.notify_interval'",
            &[],
        )
        .unwrap()
        .get(0);
    let mut listener = connect();
    listener.batch_execute("LISTEN pgflow").unwrap();

    // A burst of 50 sends, each its own transaction.
    const N: usize = 50;
    let mut producer = connect();
    let t0 = Instant::now();
    for i in 0..N as i32 {
        producer
            .execute(
                "SELECT pgflow.send($1, jsonb_build_object('i', $2::int))",
                &[&queue, &i],
            )
            .unwrap();
    }
    let burst = t0.elapsed();

    // The listener drains the queue on each notification for this queue, until it has all 50.
    // Without the trailing notification after the burst it would wait forever (the deadline).
    let mut received = 0usize;
    let mut notifications = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received < N {
        assert!(
            Instant::now() < deadline,
            "no notification for the last sends"
        );
        let mut mine = 0;
        {
            let mut notes = listener.notifications();
            let mut it = notes.timeout_iter(Duration::from_millis(500));
            while let Some(n) = it.next().unwrap() {
                assert_eq!(n.channel(), "pgflow");
                if n.payload() == queue {
                    mine += 1;
                }
            }
        }
        if mine == 0 {
            continue;
        }
        notifications += mine;
        let rows = listener
            .query("SELECT msg_id FROM pgflow.read($1, '30 s', 100)", &[&queue])
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        listener
            .execute("SELECT pgflow.archive($1, $2::bigint[])", &[&queue, &ids])
            .unwrap();
        received += ids.len();
    }
    assert_eq!(received, N);
    // At most one notification per interval started during the burst, plus the trailing one.
    let windows = (burst.as_millis() as i64 / interval_ms.max(1)) as usize + 1;
    assert!(
        notifications <= windows + 1,
        "{notifications} notifications for {N} sends in {burst:?} (interval {interval_ms} ms)"
    );
}
