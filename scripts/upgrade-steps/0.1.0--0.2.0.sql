
-- Hand-written steps (scripts/upgrade-steps/0.1.0--0.2.0.sql, appended by upgrade.sh --generate).
-- 0.2.0 limits every interval to 100 years (docs/api.md, "Limits"). 0.1.0 accepted any, and a
-- queue set beyond that stopped maintenance for its whole database: such settings come down to
-- the limit, so that every queue's can be applied.
UPDATE pgflow.queue
   SET visibility_timeout = least(visibility_timeout, interval '100 years'),
       retry_delay        = least(retry_delay, interval '100 years'),
       retry_delay_max    = least(retry_delay_max, interval '100 years'),
       archive_retention  = least(archive_retention, interval '100 years'),
       dedup_window       = least(dedup_window, interval '100 years')
 WHERE greatest(visibility_timeout, retry_delay, retry_delay_max, archive_retention,
                dedup_window) > interval '100 years';
