//! Modes: sizes and durations per mode.
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Smoke,
    Quick,
    Full,
}

/// Sizes and durations per mode. Full is what the table in bench/README.md comes from.
pub(crate) struct Plan {
    pub(crate) repeats: usize,
    pub(crate) w12_secs: u32,
    pub(crate) w12_clients: Vec<u32>,
    pub(crate) w3_backlog: i64,
    pub(crate) w3_consumers: Vec<usize>,
    pub(crate) w3_batches: Vec<i32>,
    pub(crate) w4_secs: u64,
    pub(crate) w4_consumers: Vec<usize>,
    pub(crate) w5_secs: u64,
    pub(crate) w5_rate: u64,
    pub(crate) w5_idle_secs: u64,
    pub(crate) w7_before: u64,
    pub(crate) w7_hold: u64,
    pub(crate) w7_after: u64,
    pub(crate) w8_queues: usize,
    pub(crate) w8_secs: u64,
    /// W10: length, hold period, hold length, first hold's start (s), rate per system (msg/s).
    pub(crate) w10_secs: u64,
    pub(crate) w10_period: u64,
    pub(crate) w10_hold: u64,
    pub(crate) w10_first_hold: u64,
    pub(crate) w10_rate: u64,
    /// W11: on/off pairs (short and many, so that the machine's drift over minutes falls
    /// within a pair), each half's send length (s), and the backlog each drain empties.
    pub(crate) w11_pairs: usize,
    pub(crate) w11_secs: u32,
    pub(crate) w11_backlog: i64,
    /// W6: how long to wait, after the first drain, for autovacuum to visit each system's
    /// live tables before their size is taken again (0: not measured).
    pub(crate) w6_autovacuum_wait: u64,
}

impl Plan {
    pub(crate) fn for_mode(mode: Mode) -> Plan {
        match mode {
            Mode::Smoke => Plan {
                repeats: 1,
                w12_secs: 1,
                w12_clients: vec![1, 2],
                w3_backlog: 500,
                w3_consumers: vec![1, 4],
                w3_batches: vec![10],
                w4_secs: 2,
                w4_consumers: vec![2],
                w5_secs: 1,
                w5_rate: 100,
                w5_idle_secs: 1,
                w7_before: 1,
                w7_hold: 2,
                w7_after: 1,
                w8_queues: 20,
                w8_secs: 1,
                w10_secs: 6,
                w10_period: 3,
                w10_hold: 1,
                w10_first_hold: 2,
                w10_rate: 50,
                w11_pairs: 1,
                w11_secs: 1,
                w11_backlog: 500,
                w6_autovacuum_wait: 0,
            },
            Mode::Quick => Plan {
                repeats: 2,
                w12_secs: 5,
                w12_clients: vec![1, 8],
                w3_backlog: 20_000,
                w3_consumers: vec![1, 4, 16, 64],
                w3_batches: vec![10, 100],
                w4_secs: 15,
                w4_consumers: vec![2, 4],
                w5_secs: 10,
                w5_rate: 500,
                w5_idle_secs: 5,
                w7_before: 10,
                w7_hold: 60,
                w7_after: 15,
                w8_queues: 1000,
                w8_secs: 30,
                w10_secs: 180,
                w10_period: 60,
                w10_hold: 24,
                w10_first_hold: 12,
                w10_rate: 700,
                w11_pairs: 10,
                w11_secs: 2,
                w11_backlog: 5_000,
                w6_autovacuum_wait: 150,
            },
            Mode::Full => Plan {
                repeats: 3,
                w12_secs: 10,
                w12_clients: vec![1, 8],
                w3_backlog: 200_000,
                w3_consumers: vec![1, 4, 16, 64],
                w3_batches: vec![10, 100],
                w4_secs: 60,
                w4_consumers: vec![2, 4],
                w5_secs: 30,
                w5_rate: 500,
                w5_idle_secs: 10,
                w7_before: 60,
                w7_hold: 300,
                w7_after: 60,
                w8_queues: 1000,
                w8_secs: 300,
                w10_secs: 900,
                w10_period: 300,
                w10_hold: 120,
                w10_first_hold: 60,
                w10_rate: 700,
                w11_pairs: 30,
                w11_secs: 3,
                w11_backlog: 10_000,
                w6_autovacuum_wait: 200,
            },
        }
    }
}
