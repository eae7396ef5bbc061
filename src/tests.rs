//! In-backend tests (`cargo pgrx test`): behaviour of the SQL API and every SQLSTATE it raises.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Runs `stmt` and returns its SQLSTATE ("00000" when it succeeds). The statement runs in a
    /// subtransaction (PL/pgSQL's EXCEPTION block), so the test can go on afterwards.
    fn sqlstate(stmt: &str) -> String {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(stmt text) RETURNS text
             LANGUAGE plpgsql AS $$
             BEGIN EXECUTE stmt; RETURN '00000';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        )
        .unwrap();
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[stmt.into()])
            .unwrap()
            .unwrap()
    }

    fn one_i64(q: &str) -> i64 {
        Spi::get_one::<i64>(q)
            .unwrap()
            .unwrap_or_else(|| panic!("NULL from {q}"))
    }

    fn one_bool(q: &str) -> bool {
        Spi::get_one::<bool>(q)
            .unwrap()
            .unwrap_or_else(|| panic!("NULL from {q}"))
    }

    fn setup_queue(name: &str) {
        Spi::run(&format!("SELECT pgflow.create_queue('{name}')")).unwrap();
    }

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
        let ok = one_bool(
            "SELECT read_ct = 1 AND vt > clock_timestamp() + interval '9 s'
                    AND vt <= clock_timestamp() + interval '10 s'
                    AND message = '{\"a\": 1}' AND headers = '{\"h\": \"x\"}'
               FROM pgflow.read('jobs', '10 s', 1)",
        );
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

    // ---------------------------------------------------------------------------------------
    // Failure handling: nack, backoff, lease expiry, the dead-letter queue, maintenance
    // ---------------------------------------------------------------------------------------

    /// A queue whose retries are exact (no jitter), with one leased message. Returns its id.
    fn leased_message(name: &str, extra: &str) -> i64 {
        Spi::run(&format!(
            "SELECT pgflow.create_queue('{name}', retry_jitter => 0{extra})"
        ))
        .unwrap();
        let id = one_i64(&format!("SELECT pgflow.send('{name}', '{{\"job\": 1}}')"));
        assert_eq!(
            one_i64(&format!(
                "SELECT msg_id FROM pgflow.read('{name}', '30 s', 1)"
            )),
            id
        );
        id
    }

    /// Makes a retried message deliverable now and leases it again (what the clock would do).
    fn redeliver(name: &str, id: i64) -> i64 {
        Spi::run(&format!("SELECT pgflow.set_vt('{name}', {id}, '0')")).unwrap();
        one_i64(&format!(
            "SELECT read_ct::bigint FROM pgflow.read('{name}', '30 s', 1)"
        ))
    }

    #[pg_test]
    fn nack_backoff_schedule_is_exact_under_a_controlled_now() {
        let id = leased_message("jobs", "");
        // Retries 1, 2, 3 wait 1 s, 2 s, 4 s after the nack; the 4th failed delivery is dead.
        for (attempt, wait) in [(1, "00:00:01"), (2, "00:00:02"), (3, "00:00:04")] {
            let (outcome, read_ct, waited) = Spi::get_three::<String, i32, String>(&format!(
                "SELECT outcome, read_ct, (retry_at - '2030-01-01 00:00:00+00')::text
                   FROM pgflow.nack('jobs', {id}, 'boom {attempt}', now => '2030-01-01 00:00:00+00')"
            ))
            .unwrap();
            assert_eq!(outcome.as_deref(), Some("retry"), "attempt {attempt}");
            assert_eq!(read_ct, Some(attempt));
            assert_eq!(waited.as_deref(), Some(wait), "attempt {attempt}");
            assert_eq!(redeliver("jobs", id), attempt as i64 + 1);
        }
        let (outcome, read_ct, retry_at) = Spi::get_three::<String, i32, String>(&format!(
            "SELECT outcome, read_ct, retry_at::text FROM pgflow.nack('jobs', {id}, 'boom 4')"
        ))
        .unwrap();
        assert_eq!(
            (outcome.as_deref(), read_ct, retry_at),
            (Some("dead"), Some(4), None)
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 0);
        assert!(one_bool(&format!(
            "SELECT msg_id = {id} AND read_ct = 4 AND first_error = 'boom 1' AND last_error = 'boom 4'
                    AND jsonb_array_length(errors) = 4 AND reason LIKE 'max_retries exceeded after 4 deliveries%'
                    AND message = '{{\"job\": 1}}'
               FROM pgflow.dlq_list('jobs')"
        )));
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 1);
    }

    #[pg_test]
    fn the_policy_knobs_shape_the_schedule() {
        Spi::run(
            "SELECT pgflow.create_queue('jobs', max_retries => 5, retry_delay => '10 s',
                    retry_backoff => 3, retry_delay_max => '1 min', retry_jitter => 0.5)",
        )
        .unwrap();
        let got = Spi::get_one::<String>(
            "SELECT string_agg(attempt || ':' || min_delay || '-' || max_delay, ' ' ORDER BY attempt)
               FROM pgflow.retry_schedule('jobs')",
        )
        .unwrap();
        assert_eq!(
            got.as_deref(),
            Some("1:00:00:05-00:00:10 2:00:00:15-00:00:30 3:00:00:30-00:01:00 4:00:00:30-00:01:00 5:00:00:30-00:01:00")
        );
        // A jittered nack lands inside its band.
        let id = one_i64("SELECT pgflow.send('jobs', '{}')");
        Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
        assert!(one_bool(&format!(
            "SELECT retry_at - '2030-01-01+00' BETWEEN '5 s' AND '10 s'
               FROM pgflow.nack('jobs', {id}, now => '2030-01-01+00')"
        )));
    }

    #[pg_test]
    fn retry_after_overrides_the_backoff() {
        let id = leased_message("jobs", "");
        assert!(one_bool(&format!(
            "SELECT outcome = 'retry' AND retry_at = '2030-01-01 00:10:00+00'
               FROM pgflow.nack('jobs', {id}, '429', retry_after => '10 min', now => '2030-01-01+00')"
        )));
    }

    #[pg_test]
    fn a_stale_or_misplaced_nack_is_refused_with_55000() {
        let id = leased_message("jobs", "");
        // The consumer that got read_ct 1 lost its lease; the message was delivered again.
        Spi::run(&format!("SELECT pgflow.set_vt('jobs', {id}, '0')")).unwrap();
        Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
        assert_eq!(
            sqlstate(&format!("SELECT pgflow.nack('jobs', {id}, read_ct => 1)")),
            "55000"
        );
        // The current holder's nack (read_ct 2) is accepted.
        assert!(one_bool(&format!(
            "SELECT outcome = 'retry' FROM pgflow.nack('jobs', {id}, read_ct => 2)"
        )));
        // Now it is delayed, not in flight: a second nack is refused.
        assert_eq!(
            sqlstate(&format!("SELECT pgflow.nack('jobs', {id})")),
            "55000"
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.nack('jobs', 999)"),
            0,
            "missing: no row"
        );
        for (stmt, code) in [
            ("SELECT pgflow.nack('nope', 1)", "42704"),
            ("SELECT pgflow.nack('jobs', NULL)", "22004"),
            (
                "SELECT pgflow.nack('jobs', 1, retry_after => '-1 s')",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_backoff => 0.5)",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_jitter => 1.5)",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_delay_max => '-1 s')",
                "22023",
            ),
            (
                "SELECT pgflow.alter_queue('jobs', retry_backoff => 1000)",
                "22023",
            ),
            ("SELECT pgflow.expire_leases(batch => 0)", "22023"),
            ("SELECT pgflow.expire_leases(batch => NULL)", "22004"),
            (
                "SELECT pgflow.create_queue('q2', retry_backoff => NULL)",
                "22004",
            ),
            ("SELECT pgflow.prune_archive(batch => -1)", "22023"),
            ("SELECT pgflow.dlq_list('jobs', 0)", "22023"),
            ("SELECT pgflow.dlq_list('nope')", "42704"),
            ("SELECT pgflow.dlq_retry('nope')", "42704"),
            ("SELECT pgflow.dlq_retry('jobs', NULL::bigint)", "22004"),
            ("SELECT pgflow.dlq_purge('nope')", "42704"),
            ("SELECT pgflow.retry_schedule('nope')", "42704"),
        ] {
            assert_eq!(sqlstate(stmt), code, "{stmt}");
        }
        // Nothing stored was touched by the refused calls.
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 1);
    }

    #[pg_test]
    fn an_expired_lease_is_a_failed_delivery_until_dead() {
        let id = leased_message("jobs", ", max_retries => 1");
        let future = "clock_timestamp() + interval '1 hour'";
        // The lease runs out: the worker's job schedules a retry with the policy's delay.
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            1
        );
        assert!(one_bool(&format!(
            "SELECT state = 'delayed' AND read_ct = 1 FROM pgflow.list_pending('jobs') WHERE msg_id = {id}"
        )));
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            0,
            "only once"
        );
        // Second delivery, lease runs out again: max_retries 1 is used up.
        assert_eq!(redeliver("jobs", id), 2);
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            1
        );
        assert!(one_bool(
            "SELECT reason LIKE 'visibility timeout expired after 2 deliveries%'
                    AND last_error = 'visibility timeout expired' FROM pgflow.dlq_list('jobs')"
        ));
    }

    #[pg_test]
    fn read_applies_lease_expiry_itself_without_the_worker() {
        Spi::run("SELECT pgflow.create_queue('jobs', retry_delay => '1 hour', retry_jitter => 0)")
            .unwrap();
        let id = one_i64("SELECT pgflow.send('jobs', '{}')");
        // A one-microsecond lease has run out by the next statement.
        Spi::run("SELECT pgflow.read('jobs', '1 microsecond', 1)").unwrap();
        // The next read counts the failed delivery and schedules the retry an hour out, so it
        // does not hand the message straight back.
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.read('jobs', '30 s', 10)"),
            0
        );
        assert!(one_bool(&format!(
            "SELECT state = 'delayed' AND vt > clock_timestamp() + interval '59 min'
               FROM pgflow.list_pending('jobs') WHERE msg_id = {id}"
        )));
    }

    #[pg_test]
    fn dlq_retry_redrives_with_new_ids_and_fresh_attempts() {
        Spi::run("SELECT pgflow.create_queue('jobs', max_retries => 0)").unwrap();
        let ids: Vec<i64> = (0..3)
            .map(|i| one_i64(&format!("SELECT pgflow.send('jobs', '{{\"n\": {i}}}')")))
            .collect();
        Spi::run("SELECT pgflow.read('jobs', '30 s', 10)").unwrap();
        for id in &ids {
            Spi::run(&format!("SELECT pgflow.nack('jobs', {id}, 'bad input')")).unwrap();
        }
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 3);
        // One by id: a new id, deliverable at once, read_ct back to 0.
        let new_id = one_i64(&format!("SELECT pgflow.dlq_retry('jobs', {})", ids[0]));
        assert!(new_id > ids[2]);
        assert!(
            Spi::get_one::<i64>(&format!("SELECT pgflow.dlq_retry('jobs', {})", ids[0]))
                .unwrap()
                .is_none(),
            "a dead letter is redriven once"
        );
        assert!(one_bool(&format!(
            "SELECT read_ct = 1 AND message = '{{\"n\": 0}}' FROM pgflow.read('jobs', '30 s', 10) WHERE msg_id = {new_id}"
        )));
        // The rest at once, in id order.
        assert_eq!(
            one_i64(
                "SELECT count(*) FROM pgflow.dlq_retry('jobs') r WHERE r.msg_id > r.dead_msg_id"
            ),
            2
        );
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 0);
        assert_eq!(one_i64("SELECT visible FROM pgflow.metrics('jobs')"), 2);
    }

    #[pg_test]
    fn dlq_purge_by_age() {
        Spi::run("SELECT pgflow.create_queue('jobs', max_retries => 0)").unwrap();
        for i in 0..2 {
            let id = one_i64(&format!("SELECT pgflow.send('jobs', '{{\"n\": {i}}}')"));
            Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
            Spi::run(&format!(
                "SELECT pgflow.nack('jobs', {id}, now => '2030-01-0{}+00')",
                i + 1
            ))
            .unwrap();
        }
        assert_eq!(
            one_i64("SELECT pgflow.dlq_purge('jobs', older_than => '2030-01-02+00')"),
            1
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.dlq_list('jobs')"), 1);
        assert_eq!(one_i64("SELECT pgflow.dlq_purge('jobs')"), 1);
    }

    #[pg_test]
    fn error_history_keeps_the_first_and_the_last_nineteen() {
        let id = leased_message("jobs", ", max_retries => 40");
        for i in 1..=25 {
            Spi::run(&format!("SELECT pgflow.nack('jobs', {id}, 'e{i}')")).unwrap();
            redeliver("jobs", id);
        }
        let kept = Spi::get_one::<String>(
            "SELECT string_agg(e->>'error', ',' ORDER BY ord)
               FROM pgflow.message, jsonb_array_elements(errors) WITH ORDINALITY AS x(e, ord)",
        )
        .unwrap()
        .unwrap();
        let want: Vec<String> = std::iter::once(1)
            .chain(7..=25)
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(kept, want.join(","));
    }

    #[pg_test]
    fn prune_archive_keeps_what_retention_covers() {
        Spi::run("SELECT pgflow.create_queue('jobs', archive_retention => '1 day')").unwrap();
        Spi::run("SELECT pgflow.create_queue('keep', archive_retention => '30 days')").unwrap();
        for q in ["jobs", "keep"] {
            let id = one_i64(&format!("SELECT pgflow.send('{q}', '{{}}')"));
            Spi::run(&format!("SELECT pgflow.archive('{q}', {id}::bigint)")).unwrap();
        }
        let in_two_days = "clock_timestamp() + interval '2 days'";
        assert_eq!(
            one_i64("SELECT pgflow.prune_archive()"),
            0,
            "nothing is old yet"
        );
        assert_eq!(
            one_i64(&format!(
                "SELECT pgflow.prune_archive(now => {in_two_days})"
            )),
            1
        );
        assert_eq!(
            one_i64("SELECT archive_length FROM pgflow.metrics('keep')"),
            1
        );
        assert!(one_bool(&format!(
            "SELECT array_agg(job || '=' || processed ORDER BY job) = '{{expire_leases=0,promote_delayed=0,prune_archive=0,prune_dedup=0}}'
               FROM pgflow.maintain(now => {in_two_days})"
        )));
    }

    #[pg_test]
    fn claims_never_fall_back_to_a_sequential_scan_as_the_table_grows() {
        setup_queue("jobs");
        // Statistics taken while the table is nearly empty, and plans cached with them...
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[5]))").unwrap();
        Spi::run("ANALYZE pgflow.message").unwrap();
        for _ in 0..8 {
            Spi::run("SELECT pgflow.archive('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 1)")
                .unwrap();
            Spi::run("SELECT pgflow.send('jobs', '{}')").unwrap();
        }
        // ...then the table grows far past them (bench W4 saw this between two autoanalyzes).
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[5000]))").unwrap();
        let seq_scans = || {
            one_i64("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'pgflow.message'::regclass")
        };
        let before = seq_scans();
        for _ in 0..20 {
            Spi::run(
                "SELECT pgflow.archive('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 10);
                 SELECT pgflow.delete('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 10);
                 SELECT count(*) FROM pgflow.pop('jobs', 5);",
            )
            .unwrap();
        }
        assert_eq!(
            seq_scans(),
            before,
            "a verb scanned the whole message table"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Background workers (the test server preloads pgflow). A test's own transaction is never
    // committed, so the worker cannot see its data: what the worker does to committed messages
    // is covered by the client tests (tests/client/tests/worker.rs), and so are DROP DATABASE
    // and DROP EXTENSION, which cannot run inside a test's transaction.
    // ---------------------------------------------------------------------------------------

    /// Polls `cond` until it is true or 30 s pass. The worker is another process; nothing it
    /// does can wake this backend, so this is a bounded poll, not a sleep in place of a clock.
    fn eventually(cond: &str) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            if one_bool(cond) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    const MY_WORKER_RUNS: &str = "SELECT coalesce((SELECT state = 'running' AND pid IS NOT NULL
                                     FROM pgflow.worker_status()
                                    WHERE datname = current_database()), false)";

    fn my_worker_pid() -> i32 {
        Spi::get_one::<i32>(
            "SELECT pid FROM pgflow.worker_status() WHERE datname = current_database()",
        )
        .unwrap()
        .expect("the worker has a pid")
    }

    #[pg_test]
    fn the_launcher_and_this_database_s_worker_show_in_pg_stat_activity() {
        // One query: another test may be restarting the worker meanwhile (SIGTERM test).
        assert!(
            eventually(
                "SELECT EXISTS (SELECT 1 FROM pgflow.worker_status() s
                                  JOIN pg_stat_activity a ON a.pid = s.pid
                                 WHERE s.datname = current_database() AND s.state = 'running'
                                   AND a.backend_type = 'pgflow worker'
                                   AND a.datname = current_database())"
            ),
            "no worker for this database in pg_stat_activity"
        );
        assert!(one_bool(
            "SELECT count(*) = 1 FROM pg_stat_activity
              WHERE backend_type = 'pgflow launcher' AND datname IS NULL"
        ));
    }

    #[pg_test]
    fn the_worker_ticks_and_counts_its_rounds() {
        assert!(eventually(MY_WORKER_RUNS));
        let ticks =
            one_i64("SELECT ticks FROM pgflow.worker_status() WHERE datname = current_database()");
        assert!(eventually(&format!(
            "SELECT ticks > {ticks} AND last_tick_at IS NOT NULL AND started_at <= last_tick_at
               FROM pgflow.worker_status() WHERE datname = current_database()"
        )));
    }

    #[pg_test]
    fn sigterm_ends_the_worker_and_the_launcher_starts_a_new_one() {
        assert!(eventually(MY_WORKER_RUNS));
        let pid = my_worker_pid();
        let restarts = one_i64(
            "SELECT restarts FROM pgflow.worker_status() WHERE datname = current_database()",
        );
        assert!(one_bool(&format!("SELECT pg_terminate_backend({pid})")));
        assert!(
            eventually(&format!(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid})"
            )),
            "the worker ignored SIGTERM"
        );
        assert!(
            eventually(&format!(
                "SELECT coalesce((SELECT state = 'running' AND pid <> {pid} AND restarts > {restarts}
                                    FROM pgflow.worker_status()
                                   WHERE datname = current_database()), false)"
            )),
            "no new worker after SIGTERM"
        );
    }

    #[pg_test]
    fn maintain_runs_every_job_and_rejects_bad_batches() {
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(job || '=' || processed, ',') FROM pgflow.maintain()"
            )
            .unwrap()
            .unwrap(),
            "expire_leases=0,promote_delayed=0,prune_archive=0,prune_dedup=0"
        );
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.maintain(batch => 0)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.maintain(prune_batch => NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT pgflow.promote_delayed(batch => -1)"),
            "22023"
        );
    }

    #[pg_test]
    fn promote_delayed_makes_due_messages_ready_and_leaves_the_rest() {
        setup_queue("promote");
        Spi::run(
            "SELECT pgflow.send('promote', '{\"n\": 1}', delay => '10 seconds');
             SELECT pgflow.send('promote', '{\"n\": 2}', delay => '1 hour');",
        )
        .unwrap();
        let at = "clock_timestamp() + interval '1 minute'";
        assert_eq!(one_i64(&format!("SELECT pgflow.promote_delayed({at})")), 1);
        assert_eq!(
            one_i64(&format!("SELECT pgflow.promote_delayed({at})")),
            0,
            "idempotent"
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg((message->>'n') || ':' || state::text, ',' ORDER BY msg_id)
                   FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
                  WHERE q.queue_name = 'promote'"
            )
            .unwrap()
            .unwrap(),
            "1:r,2:d"
        );
    }
}
