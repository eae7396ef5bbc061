//! Queue semantics that need no Postgres: plain Rust, tested with plain `#[test]`s.
pub mod contract;
pub mod name;
pub mod receipt;
pub mod retry;
pub mod topic;
