//! Worker decisions that need no Postgres: the database filter and the restart backoff.
//! Plain Rust with plain `#[test]`s.
use std::time::Duration;

/// Whether `datname` passes a `pgflow.databases` list: comma-separated names, surrounding
/// blanks ignored, exact (case-sensitive) match, as `datname` is stored. An empty or unset list
/// passes every database.
pub fn allows(list: Option<&str>, datname: &str) -> bool {
    let Some(list) = list else { return true };
    let mut names = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .peekable();
    if names.peek().is_none() {
        return true;
    }
    names.any(|n| n == datname)
}

/// A worker that ran at least this long before it stopped is counted as healthy: its next
/// restart waits only the first delay again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before restarting a worker after its `failures`-th consecutive unplanned exit
/// (an error, a crash, a `pg_terminate_backend`): 1 s, doubling, at most 60 s. A worker that
/// keeps failing (a broken database, say) costs one log line a minute, not a loop.
pub fn restart_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_blank_list_allows_every_database() {
        assert!(allows(None, "app"));
        assert!(allows(Some(""), "app"));
        assert!(allows(Some(" , ,"), "app"));
    }

    #[test]
    fn a_list_allows_exactly_its_names() {
        let list = Some("app, jobs ,Evolution");
        assert!(allows(list, "app"));
        assert!(allows(list, "jobs"));
        assert!(allows(list, "Evolution"));
        assert!(
            !allows(list, "evolution"),
            "names are case-sensitive, as datname is"
        );
        assert!(!allows(list, "ap"), "no prefix match");
        assert!(!allows(list, "postgres"));
    }

    #[test]
    fn restarts_back_off_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 60);
    }
}
