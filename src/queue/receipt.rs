//! Lease receipts: what a read hands a consumer so that its archive, delete, set_vt or nack can
//! name the delivery it received, not only the message id.
//!
//! An id alone is not enough. After a failover that lost acknowledged sends (asynchronous
//! replication, or a client that cancelled its wait for the synchronous standby), the new
//! primary hands the same ids out again, to different messages; and a consumer whose lease ran
//! out would otherwise archive the message another consumer now holds. A receipt is computed,
//! not stored (no byte per message): it mixes the message's `enqueued_at` (microseconds since
//! 2000-01-01, Postgres's own representation) with its `read_ct`, which each read increments.
//! Two deliveries of one message differ in `read_ct`; two messages given one id differ in
//! `enqueued_at`. They could only collide if they were sent a multiple of 2^48 µs (8.9 years)
//! apart to the microsecond, with matching delivery counts.

/// The receipt of delivery `read_ct` of a message sent at `enqueued_at_us`.
pub fn receipt(enqueued_at_us: i64, read_ct: i32) -> i64 {
    enqueued_at_us ^ (i64::from(read_ct) << 48)
}

#[cfg(test)]
mod tests {
    use super::receipt;

    #[test]
    fn deliveries_and_messages_get_distinct_receipts() {
        let t = 849_312_000_000_000; // 2026-11-30 in Postgres's microseconds
        let mut seen = std::collections::HashSet::new();
        for ct in 0..1000 {
            assert!(seen.insert(receipt(t, ct)), "read_ct {ct}");
            assert!(
                seen.insert(receipt(t + 1, ct)),
                "read_ct {ct}, one µs later"
            );
        }
        // The same delivery of the same message always gets the same receipt.
        assert_eq!(receipt(t, 3), receipt(t, 3));
        // Negative times (before 2000) and large counts are fine: it is a plain bigint.
        assert_ne!(receipt(-5, 1), receipt(-5, 2));
        assert_ne!(receipt(t, i32::MAX), receipt(t, i32::MAX - 1));
    }
}
