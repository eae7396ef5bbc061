//! The SQL API: queues, send, read, archive, delete, set_vt, metrics, and the SQLSTATE of
//! every bad input.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::{one_bool, one_i64, setup_queue, sqlstate};

    #[pg_test]
    fn create_queue_is_listed_with_defaults() {
        assert!(one_bool("SELECT pgflow.create_queue('jobs')"));
        let (vt, retries, delay) = Spi::get_three::<String, i32, String>(
            "SELECT visibility_timeout::text, max_retries, retry_delay::text
               FROM pgflow.list_queues() WHERE queue_name = 'jobs'",
        )
        .unwrap();
        assert_eq!(vt.as_deref(), Some("00:00:30"));
        assert_eq!(retries, Some(3));
        assert_eq!(delay.as_deref(), Some("00:00:01"));
    }

    #[pg_test]
    fn second_create_is_42710_or_idempotent() {
        setup_queue("jobs");
        assert_eq!(sqlstate("SELECT pgflow.create_queue('jobs')"), "42710");
        assert!(!one_bool(
            "SELECT pgflow.create_queue('jobs', max_retries => 9, if_not_exists => true)"
        ));
        // The existing queue keeps its settings.
        assert_eq!(
            one_i64("SELECT max_retries::bigint FROM pgflow.list_queues()"),
            3
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.queue"), 1);
    }

    #[pg_test]
    fn bad_queue_names_are_22023_and_never_reach_sql() {
        Spi::run("CREATE TABLE public.y (v int); INSERT INTO public.y VALUES (1)").unwrap();
        assert_eq!(
            sqlstate("SELECT pgflow.create_queue('x; drop table y --')"),
            "22023"
        );
        assert_eq!(sqlstate("SELECT pgflow.create_queue('')"), "22023");
        assert_eq!(
            sqlstate(&format!("SELECT pgflow.create_queue('{}')", "a".repeat(81))),
            "22023"
        );
        assert_eq!(sqlstate("SELECT pgflow.create_queue(NULL)"), "22004");
        // A verb on a name that could never exist says so (22023), not just "unknown" (42704).
        assert_eq!(
            sqlstate("SELECT pgflow.send('x; drop table y --', '{}')"),
            "22023"
        );
        assert_eq!(one_i64("SELECT count(*) FROM public.y"), 1);
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.queue"), 0);
    }

    #[pg_test]
    fn unknown_queue_is_42704_for_every_verb() {
        for stmt in [
            "SELECT pgflow.send('nope', '{}')",
            "SELECT pgflow.send_batch('nope', ARRAY['{}'::jsonb])",
            "SELECT pgflow.read('nope', '30 s', 1)",
            "SELECT pgflow.pop('nope')",
            "SELECT pgflow.archive('nope', 1::bigint)",
            "SELECT pgflow.archive('nope', ARRAY[1::bigint])",
            "SELECT pgflow.delete('nope', 1::bigint)",
            "SELECT pgflow.delete('nope', ARRAY[1::bigint])",
            "SELECT pgflow.set_vt('nope', 1, '1 s')",
            "SELECT pgflow.metrics('nope')",
            "SELECT pgflow.list_pending('nope')",
            "SELECT pgflow.purge_queue('nope')",
            "SELECT pgflow.alter_queue('nope', max_retries => 1)",
            "SELECT pgflow.drop_queue('nope')",
        ] {
            assert_eq!(sqlstate(stmt), "42704", "{stmt}");
        }
        assert!(!one_bool(
            "SELECT pgflow.drop_queue('nope', if_exists => true)"
        ));
    }

    #[pg_test]
    fn bad_arguments_are_22023_or_22004_and_lose_nothing() {
        setup_queue("jobs");
        let id = one_i64("SELECT pgflow.send('jobs', '{\"n\": 1}')");
        for (stmt, code) in [
            ("SELECT pgflow.send('jobs', '[1,2]')", "22023"),
            ("SELECT pgflow.send('jobs', '\"text\"')", "22023"),
            ("SELECT pgflow.send('jobs', NULL)", "22004"),
            ("SELECT pgflow.send('jobs', '{}', headers => '[]')", "22023"),
            ("SELECT pgflow.send('jobs', '{}', delay => '-1 s')", "22023"),
            ("SELECT pgflow.send_batch('jobs', ARRAY['{}', '1']::jsonb[])", "22023"),
            ("SELECT pgflow.send_batch('jobs', ARRAY['{}', NULL]::jsonb[])", "22004"),
            ("SELECT pgflow.send_batch('jobs', NULL)", "22004"),
            ("SELECT pgflow.send_batch('jobs', ARRAY['{}']::jsonb[], ARRAY['{}', '{}']::jsonb[])", "22023"),
            ("SELECT pgflow.read('jobs', '30 s', 0)", "22023"),
            ("SELECT pgflow.read('jobs', '30 s', -5)", "22023"),
            ("SELECT pgflow.read('jobs', '30 s', NULL)", "22004"),
            ("SELECT pgflow.read('jobs', '0 s', 1)", "22023"),
            ("SELECT pgflow.read('jobs', '-1 s', 1)", "22023"),
            ("SELECT pgflow.pop('jobs', 0)", "22023"),
            ("SELECT pgflow.set_vt('jobs', 1, '-1 s')", "22023"),
            ("SELECT pgflow.set_vt('jobs', NULL, '1 s')", "22004"),
            ("SELECT pgflow.archive('jobs', NULL::bigint)", "22004"),
            ("SELECT pgflow.archive('jobs', NULL::bigint[])", "22004"),
            ("SELECT pgflow.list_pending('jobs', 0)", "22023"),
            ("SELECT pgflow.create_queue('q2', visibility_timeout => '0 s')", "22023"),
            ("SELECT pgflow.create_queue('q2', max_retries => -1)", "22023"),
            ("SELECT pgflow.create_queue('q2', retry_delay => '-1 s')", "22023"),
            ("SELECT pgflow.create_queue('q2', archive_retention => NULL)", "22004"),
            ("SELECT pgflow.alter_queue('jobs', visibility_timeout => '-1 s')", "22023"),
            ("SELECT pgflow.alter_queue('jobs', max_retries => -1)", "22023"),
        ] {
            assert_eq!(sqlstate(stmt), code, "{stmt}");
        }
        // Nothing already stored was lost or changed.
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 1);
        assert_eq!(
            one_i64("SELECT msg_id FROM pgflow.read('jobs', '30 s', 10)"),
            id
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.queue"), 1);
    }

    #[pg_test]
    fn read_leases_in_fifo_order_and_hides_leased_messages() {
        setup_queue("jobs");
        let ids: Vec<i64> = (0..5)
            .map(|i| one_i64(&format!("SELECT pgflow.send('jobs', '{{\"n\": {i}}}')")))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

        let got: Vec<i64> = Spi::connect(|c| {
            c.select(
                "SELECT msg_id FROM pgflow.read('jobs', '30 s', 3)",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<i64>(1).unwrap().unwrap())
            .collect()
        });
        assert_eq!(got, ids[..3]);
        // Leased messages are not handed out again while the lease runs.
        let rest: Vec<i64> = Spi::connect(|c| {
            c.select(
                "SELECT msg_id FROM pgflow.read('jobs', '30 s', 10)",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<i64>(1).unwrap().unwrap())
            .collect()
        });
        assert_eq!(rest, ids[3..]);
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.read('jobs', '30 s', 10)"),
            0
        );
    }

    #[pg_test]
    fn read_returns_the_lease_and_read_count() {
        setup_queue("jobs");
        let id = one_i64("SELECT pgflow.send('jobs', '{\"a\": 1}', headers => '{\"h\": \"x\"}')");
        // The lease is 10 s from the claim, which falls between two clock readings around it
        // (read runs to completion before the outer select list is evaluated).
        let before = Spi::get_one::<TimestampWithTimeZone>("SELECT clock_timestamp()")
            .unwrap()
            .unwrap();
        let ok = Spi::get_one_with_args::<bool>(
            "SELECT read_ct = 1 AND vt - interval '10 s' BETWEEN $1 AND clock_timestamp()
                    AND message = '{\"a\": 1}' AND headers = '{\"h\": \"x\"}'
               FROM pgflow.read('jobs', '10 s', 1)",
            &[before.into()],
        )
        .unwrap()
        .unwrap();
        assert!(ok);
        // An expired lease makes the message deliverable again, counted as a second delivery.
        Spi::run(&format!("SELECT pgflow.set_vt('jobs', {id}, '0 s')")).unwrap();
        assert_eq!(
            one_i64("SELECT read_ct::bigint FROM pgflow.read('jobs', '10 s', 1)"),
            2
        );
    }

    #[pg_test]
    fn default_visibility_timeout_comes_from_the_queue() {
        Spi::run("SELECT pgflow.create_queue('jobs', visibility_timeout => '2 minutes')").unwrap();
        Spi::run("SELECT pgflow.send('jobs', '{}')").unwrap();
        assert!(one_bool(
            "SELECT vt > clock_timestamp() + interval '110 s' FROM pgflow.read('jobs', qty => 1)"
        ));
    }

    #[pg_test]
    fn delayed_messages_wait_for_their_time() {
        setup_queue("jobs");
        let id = one_i64("SELECT pgflow.send('jobs', '{}', delay => '1 hour')");
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.read('jobs', '30 s', 10)"),
            0
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT state FROM pgflow.list_pending('jobs')")
                .unwrap()
                .as_deref(),
            Some("delayed")
        );
        // Bring it due: it is delivered.
        Spi::run(&format!("SELECT pgflow.set_vt('jobs', {id}, '0 s')")).unwrap();
        assert_eq!(
            one_i64("SELECT msg_id FROM pgflow.read('jobs', '30 s', 10)"),
            id
        );
    }

    #[pg_test]
    fn send_batch_returns_ids_in_input_order() {
        setup_queue("jobs");
        let ids = Spi::get_one::<Vec<i64>>(
            "SELECT array_agg(i) FROM pgflow.send_batch('jobs',
                 ARRAY['{\"n\":1}','{\"n\":2}','{\"n\":3}']::jsonb[],
                 ARRAY['{\"k\":\"a\"}', NULL, '{\"k\":\"c\"}']::jsonb[]) AS i",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
        // Each id carries its own payload and headers, paired by position.
        let stored = Spi::get_one::<String>(
            "SELECT string_agg(msg_id || ':' || (message->>'n') || ':' || coalesce(headers->>'k', '-'),
                               ',' ORDER BY msg_id) FROM pgflow.message",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            stored,
            format!("{}:1:a,{}:2:-,{}:3:c", ids[0], ids[1], ids[2])
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.send_batch('jobs', '{}'::jsonb[])"),
            0
        );
    }

    #[pg_test]
    fn archive_moves_to_the_audit_trail() {
        setup_queue("jobs");
        let a = one_i64("SELECT pgflow.send('jobs', '{\"n\": 1}')");
        let b = one_i64("SELECT pgflow.send('jobs', '{\"n\": 2}')");
        assert!(one_bool(&format!(
            "SELECT pgflow.archive('jobs', {a}::bigint)"
        )));
        assert!(
            !one_bool(&format!("SELECT pgflow.archive('jobs', {a}::bigint)")),
            "only once"
        );
        assert_eq!(
            one_i64(&format!(
                "SELECT count(*) FROM pgflow.archive('jobs', ARRAY[{a}, {b}, 999])"
            )),
            1
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 0);
        assert!(one_bool(
            "SELECT array_agg((message->>'n')::int ORDER BY msg_id) = '{1,2}' FROM pgflow.archive"
        ));
        assert!(one_bool(
            "SELECT total_archived = 2 AND archive_length = 2 AND queue_length = 0
               FROM pgflow.metrics('jobs')"
        ));
    }

    #[pg_test]
    fn archive_read_archives_then_leases_in_one_call() {
        setup_queue("jobs");
        let a = one_i64("SELECT pgflow.send('jobs', '{\"n\": 1}')");
        let b = one_i64("SELECT pgflow.send('jobs', '{\"n\": 2}')");
        assert_eq!(
            one_i64("SELECT msg_id FROM pgflow.read('jobs', '30 s', 1)"),
            a
        );
        // Bad arguments are refused before the archive: a stays leased.
        for bad in [
            format!("SELECT * FROM pgflow.archive_read('jobs', ARRAY[{a}], qty => 0)"),
            format!("SELECT * FROM pgflow.archive_read('jobs', ARRAY[{a}], vt => '-1 s')"),
            format!("SELECT * FROM pgflow.archive_read('jobs', ARRAY[{a}], wait => '-1 s')"),
        ] {
            assert_eq!(sqlstate(&bad), "22023", "{bad}");
        }
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.archive_read('jobs', NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.archive_read('nope', '{}')"),
            "42704"
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.archive"), 0);
        // a is archived, b leased; an empty array only reads.
        assert_eq!(
            one_i64(&format!(
                "SELECT msg_id FROM pgflow.archive_read('jobs', ARRAY[{a}], '30 s', 10)"
            )),
            b
        );
        assert!(one_bool(&format!(
            "SELECT array_agg(msg_id) = ARRAY[{a}::bigint] FROM pgflow.archive"
        )));
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.archive_read('jobs', '{}')"),
            0
        );
        assert!(one_bool(
            "SELECT in_flight = 1 AND total_archived = 1 FROM pgflow.metrics('jobs')"
        ));
    }

    #[pg_test]
    fn delete_and_pop_keep_nothing() {
        setup_queue("jobs");
        let a = one_i64("SELECT pgflow.send('jobs', '{\"n\": 1}')");
        one_i64("SELECT pgflow.send('jobs', '{\"n\": 2}')");
        assert!(one_bool(&format!(
            "SELECT pgflow.delete('jobs', {a}::bigint)"
        )));
        assert!(!one_bool(&format!(
            "SELECT pgflow.delete('jobs', {a}::bigint)"
        )));
        assert_eq!(
            one_i64("SELECT (message->>'n')::bigint FROM pgflow.pop('jobs')"),
            2
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.pop('jobs', 5)"), 0);
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 0);
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.archive"), 0);
    }

    #[pg_test]
    fn set_vt_extends_a_lease() {
        setup_queue("jobs");
        let id = one_i64("SELECT pgflow.send('jobs', '{}')");
        Spi::run("SELECT pgflow.read('jobs', '1 s', 1)").unwrap();
        assert!(one_bool(&format!(
            "SELECT vt > clock_timestamp() + interval '50 s' FROM pgflow.set_vt('jobs', {id}, '60 s')"
        )));
        assert_eq!(
            Spi::get_one::<String>("SELECT state FROM pgflow.list_pending('jobs')")
                .unwrap()
                .as_deref(),
            Some("in_flight")
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.set_vt('jobs', 424242, '1 s')"),
            0
        );
    }

    #[pg_test]
    fn metrics_count_each_state() {
        setup_queue("jobs");
        setup_queue("other");
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[5]))").unwrap();
        Spi::run("SELECT pgflow.send('jobs', '{}', delay => '1 hour')").unwrap();
        Spi::run("SELECT pgflow.read('jobs', '30 s', 2)").unwrap();
        assert!(one_bool(
            "SELECT queue_length = 6 AND visible = 3 AND in_flight = 2 AND delayed = 1
                    AND total_messages = 6 AND total_archived = 0 AND oldest_msg_age_sec >= 0
               FROM pgflow.metrics('jobs')"
        ));
        assert!(one_bool(
            "SELECT array_agg(queue_name ORDER BY queue_name) = '{jobs,other}'
                    AND sum(queue_length) = 6
               FROM pgflow.metrics_all()"
        ));
        assert!(one_bool(
            "SELECT queue_length = 0 AND oldest_msg_age_sec IS NULL AND total_messages = 0
               FROM pgflow.metrics('other')"
        ));
    }

    #[pg_test]
    fn alter_purge_and_drop() {
        setup_queue("jobs");
        assert!(one_bool(
            "SELECT max_retries = 5 AND visibility_timeout = '1 min' AND retry_delay = '1 s'
               FROM pgflow.alter_queue('jobs', visibility_timeout => '1 min', max_retries => 5)"
        ));
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[4]))").unwrap();
        Spi::run("SELECT pgflow.archive('jobs', 1::bigint)").unwrap();
        assert_eq!(one_i64("SELECT pgflow.purge_queue('jobs')"), 3);
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.archive"),
            1,
            "purge keeps the archive"
        );
        assert!(one_bool("SELECT pgflow.drop_queue('jobs')"));
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.archive"), 0);
        assert_eq!(
            one_i64("SELECT count(*) FROM pg_class WHERE relnamespace = 'pgflow'::regnamespace AND relkind = 'S' AND relname ~ '^q[0-9]+_'"),
            0,
            "the queue's sequences are gone"
        );
        // The name is free again, with fresh ids.
        setup_queue("jobs");
        assert_eq!(one_i64("SELECT pgflow.send('jobs', '{}')"), 1);
    }

    #[pg_test]
    fn queues_are_isolated_from_each_other() {
        setup_queue("a");
        setup_queue("b");
        // Ids are per queue: both queues start at 1.
        assert_eq!(one_i64("SELECT pgflow.send('a', '{\"q\": \"a\"}')"), 1);
        assert_eq!(one_i64("SELECT pgflow.send('b', '{\"q\": \"b\"}')"), 1);
        // Archiving id 1 in b touches only b's message.
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.archive('b', ARRAY[1::bigint])"),
            1
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT message->>'q' FROM pgflow.read('a', '30 s', 10)")
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.read('b', '30 s', 10)"),
            0
        );
    }

    #[pg_test]
    fn list_pending_shows_delivery_order_without_leasing() {
        setup_queue("jobs");
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[3]))").unwrap();
        let order = Spi::get_one::<String>(
            "SELECT string_agg(msg_id::text, ',') FROM pgflow.list_pending('jobs', 2)",
        )
        .unwrap();
        assert_eq!(order.as_deref(), Some("1,2"));
        assert_eq!(one_i64("SELECT visible FROM pgflow.metrics('jobs')"), 3);
    }
}
