//! Measuring helpers.
use std::fs;
use std::thread;
use std::time::Duration;

use postgres::Client;

use crate::systems::Sys;
use crate::Res;

/// CPU seconds (user + system) a process has used, from /proc; with `reaped`, also what its
/// children that exited and were waited for used.
fn proc_cpu_secs(pid: i32, reaped: bool) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that closes the command name: state is field 3; utime 14, stime 15,
    // cutime 16, cstime 17.
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> f64 { f.get(n - 3).and_then(|x| x.parse().ok()).unwrap_or(0.0) };
    let mut ticks = field(14) + field(15);
    if reaped {
        ticks += field(16) + field(17);
    }
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// CPU seconds (user + system) a process has used, from /proc.
pub(crate) fn cpu_secs(pid: i32) -> f64 {
    proc_cpu_secs(pid, false)
}

/// CPU seconds used by every process of the cluster: the postmaster, its live children, and
/// the children that exited (a backend whose client disconnected), which the kernel adds to
/// the postmaster's account when it reaps them. So the figure only grows.
pub(crate) fn cluster_cpu_secs(c: &mut Client) -> Res<f64> {
    let data_dir: String = c
        .query_one("SELECT current_setting('data_directory')", &[])?
        .get(0);
    let pid_line = fs::read_to_string(format!("{data_dir}/postmaster.pid"))?;
    let postmaster: i32 = pid_line.lines().next().unwrap_or("0").trim().parse()?;
    let mut total = proc_cpu_secs(postmaster, true);
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
            let ppid: i32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if ppid == postmaster {
                total += cpu_secs(pid);
            }
        }
    }
    Ok(total)
}

pub(crate) fn wal_lsn(c: &mut Client) -> Res<f64> {
    Ok(
        c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::float8", &[])?
            .get(0),
    )
}

/// Bytes of tables + indexes + TOAST, and dead tuples of the heap tables.
pub(crate) fn size_and_dead(c: &mut Client, rels: &[String]) -> Res<(f64, f64)> {
    // Statistics reach the cumulative stats system up to a second after a transaction ends.
    thread::sleep(Duration::from_millis(1100));
    c.execute("SELECT pg_stat_clear_snapshot()", &[])?;
    let mut bytes = 0.0;
    let mut dead = 0.0;
    for r in rels {
        let row = c.query_one(
            "SELECT pg_total_relation_size($1::text::regclass)::float8,
                    coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::text::regclass), 0)::float8",
            &[r],
        )?;
        bytes += row.get::<_, f64>(0);
        dead += row.get::<_, f64>(1);
    }
    Ok((bytes, dead))
}

/// Per heap table: how many times autovacuum has visited it, and its dead tuples now.
pub(crate) fn autovacuum_state(c: &mut Client, rels: &[String]) -> Res<Vec<(i64, i64)>> {
    c.execute("SELECT pg_stat_clear_snapshot()", &[])?;
    let mut v = Vec::new();
    for r in rels {
        let row = c.query_one(
            "SELECT coalesce(autovacuum_count, 0), coalesce(n_dead_tup, 0)
               FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
            &[r],
        )?;
        v.push((row.get(0), row.get(1)));
    }
    Ok(v)
}

/// Waits until autovacuum has visited, since `before` was taken, every table that then had dead
/// tuples; gives up after `secs` (autovacuum_naptime is a minute by default). True when it did.
pub(crate) fn wait_autovacuum(
    c: &mut Client,
    rels: &[String],
    before: &[(i64, i64)],
    secs: u64,
) -> Res<bool> {
    for _ in 0..secs {
        let now = autovacuum_state(c, rels)?;
        if before.iter().zip(&now).all(|(b, n)| b.1 == 0 || n.0 > b.0) {
            return Ok(true);
        }
        thread::sleep(Duration::from_secs(1));
    }
    Ok(false)
}

/// Bytes of the tables' heaps alone (size_and_dead counts indexes and TOAST too).
pub(crate) fn heap_bytes(c: &mut Client, rels: &[String]) -> Res<f64> {
    let mut bytes = 0.0;
    for r in rels {
        let row = c.query_one("SELECT pg_relation_size($1::text::regclass)::float8", &[r])?;
        bytes += row.get::<_, f64>(0);
    }
    Ok(bytes)
}

/// Systems in a rotating order per repeat, so no system always runs first (on a cold cache)
/// or last (on a warm one).
pub(crate) fn rotation(systems: &[Sys], repeat: usize) -> Vec<Sys> {
    let mut v = systems.to_vec();
    let n = v.len();
    v.rotate_left(repeat % n.max(1));
    v
}
