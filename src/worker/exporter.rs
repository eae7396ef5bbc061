//! The Prometheus endpoint: a static background worker, registered when
//! `pgflow.metrics_listen` is set, that serves `GET /metrics` (the text of `exposition.rs`)
//! over plain HTTP/1.x, and `GET /`, a status page for people (`status_page.rs`).
//!
//! It connects to no database (only to shared memory, as the launcher does, so that it shows
//! in pg_stat_activity): everything it prints is in shared memory, so a scrape runs no query,
//! takes no table lock and costs O(queues). It answers one connection at a time and
//! closes it; a request must arrive whole within `READ_TIMEOUT` and fit in `MAX_REQUEST`
//! bytes, so a slow or hostile client holds it at most a few seconds and memory stays
//! bounded (the largest answer, for `MAX_QUEUES` queues, is a few MB). Anything it does not
//! serve gets a short HTTP error: 400 for what it cannot parse, 404, 405, 408, 431.
//!
//! It is unauthenticated (docs/operations.md): listen on loopback (the example) or a trusted
//! network. On a hot standby it starts only with `pgflow.metrics_on_standby`; otherwise once
//! the server is promoted.
use std::ffi::CStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

use super::{
    exposition, handle_interrupts, now, policy, setup_signals, status_page, SlotState, REGISTRY,
};
use crate::guc;
use crate::ipc::stats;

/// Bytes a request (line and headers) may take.
const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request, and to take the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn listen_address() -> Option<String> {
    let v = guc::METRICS_LISTEN.get()?;
    let s = v.to_string_lossy().trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Registers the endpoint's worker when `pgflow.metrics_listen` is set (from `_PG_init`).
pub fn register() {
    if listen_address().is_none() {
        return;
    }
    let start = if guc::METRICS_ON_STANDBY.get() {
        BgWorkerStartTime::ConsistentState
    } else {
        BgWorkerStartTime::RecoveryFinished
    };
    BackgroundWorkerBuilder::new("pgflow exporter")
        .set_type("pgflow exporter")
        .set_library("pgflow")
        .set_function("pgflow_exporter_main")
        // Connected to no database, like the launcher: it only gets a PGPROC, and so a row
        // in pg_stat_activity ("pgflow exporter").
        .enable_spi_access()
        .set_start_time(start)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

/// What a request asks for, or the error status to answer it with.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics { head: bool },
    Page { head: bool },
    Error(u16, &'static str),
}

/// Parses a request head (up to the blank line); `complete` says whether the blank line came.
pub fn route(head: &[u8], complete: bool) -> Route {
    if !complete {
        return if head.len() >= MAX_REQUEST {
            Route::Error(431, "Request Header Fields Too Large")
        } else {
            Route::Error(408, "Request Timeout")
        };
    }
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::Error(400, "Bad Request");
    };
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Error(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Route::Error(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Route::Error(405, "Method Not Allowed")
        }
        _ => return Route::Error(400, "Bad Request"),
    };
    match path {
        "/metrics" => Route::Metrics { head },
        "/" => Route::Page { head },
        _ => Route::Error(404, "Not Found"),
    }
}

/// Reads a request head: the bytes up to and with the blank line, and whether it came.
fn read_head(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return (buf, true);
        }
        if buf.len() >= MAX_REQUEST {
            return (buf, false);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => buf.extend_from_slice(&chunk[..n.min(MAX_REQUEST - buf.len())]),
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, reason: &str, kind: &str, body: &[u8], head: bool) {
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    if !head {
        let _ = stream.write_all(body);
    }
    let _ = stream.flush();
    if status == 200 {
        return;
    }
    // A lingering close for a refused request, whose input may not have been read: closing
    // with unread input would reset the connection, and the client could lose the answer.
    // Stop sending, then discard what the client still sends, at most MAX_REQUEST bytes more
    // and READ_TIMEOUT long.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 1024];
    let mut left = MAX_REQUEST;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The databases the endpoint serves (`pgflow.metrics_databases`), by oid.
fn served(dboid: u32) -> bool {
    let name = {
        let reg = REGISTRY.share();
        reg.slots
            .iter()
            .find(|s| s.state != SlotState::Free && s.dboid == dboid)
            .map(|s| s.name())
    };
    let Some(name) = name else { return false };
    let list = guc::METRICS_DATABASES.get();
    let list = list.as_deref().map(CStr::to_string_lossy);
    policy::allows(list.as_deref(), &name)
}

fn db_name(dboid: u32) -> String {
    let reg = REGISTRY.share();
    reg.slots
        .iter()
        .find(|s| s.state != SlotState::Free && s.dboid == dboid)
        .map_or_else(|| dboid.to_string(), |s| s.name())
}

fn serve(mut stream: TcpStream, history: &status_page::History) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (head, complete) = read_head(&mut stream);
    if head.is_empty() && !complete {
        return; // connected and said nothing
    }
    match route(&head, complete) {
        Route::Metrics { head } => {
            let text = exposition::render(&served, &|_, _| true, None);
            respond(
                &mut stream,
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                head,
            );
        }
        Route::Page { head } => {
            let page = status_page::render(&stats::snapshot(served), &db_name, history);
            respond(
                &mut stream,
                200,
                "OK",
                "text/html; charset=utf-8",
                page.as_bytes(),
                head,
            );
        }
        Route::Error(status, reason) => {
            let body = format!("{status} {reason}\n");
            respond(
                &mut stream,
                status,
                reason,
                "text/plain; charset=utf-8",
                body.as_bytes(),
                false,
            );
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgflow_exporter_main(_arg: pg_sys::Datum) {
    setup_signals();
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0);
    }
    let Some(addr) = listen_address() else { return };
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l.set_nonblocking(true).is_ok().then_some(l),
        Err(e) => {
            pgrx::warning!("pgflow exporter: cannot listen on \"{addr}\": {e}");
            None
        }
    };
    let Some(listener) = listener else {
        // Exits with 1: the postmaster tries again after the restart time.
        unsafe { pg_sys::proc_exit(1) };
        #[allow(unreachable_code)] // proc_exit returns `!` in some majors' bindings only
        return;
    };
    pgrx::log!("pgflow exporter listening on {addr}");
    let mut history = status_page::History::default();
    let mut sampled = 0i64;
    loop {
        handle_interrupts();
        if now() - sampled >= status_page::SAMPLE_EVERY_US {
            sampled = now();
            history.sample(&stats::snapshot(served), sampled);
        }
        unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET
                    | pg_sys::WL_SOCKET_READABLE
                    | pg_sys::WL_TIMEOUT
                    | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                listener.as_raw_fd(),
                1000,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        // Every connection waiting now, one at a time.
        while let Ok((stream, _)) = listener.accept() {
            serve(stream, &history);
            handle_interrupts();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_or_refused_with_a_status() {
        let ok = |s: &str| route(s.as_bytes(), true);
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            ok("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(
            ok("GET /nope HTTP/1.1\r\n\r\n"),
            Route::Error(404, "Not Found")
        );
        assert_eq!(ok("GET / HTTP/1.1\r\n\r\n"), Route::Page { head: false });
        assert_eq!(
            ok("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::Error(405, "Method Not Allowed")
        );
        assert_eq!(ok("GET /metrics\r\n\r\n"), Route::Error(400, "Bad Request"));
        assert_eq!(
            ok("\u{0}\u{1} / HTTP/1.1\r\n\r\n"),
            Route::Error(400, "Bad Request")
        );
        assert_eq!(
            ok("GET metrics HTTP/1.1\r\n\r\n"),
            Route::Error(400, "Bad Request")
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n", false),
            Route::Error(408, "Request Timeout")
        );
        assert_eq!(
            route(&[b'a'; MAX_REQUEST], false),
            Route::Error(431, "Request Header Fields Too Large")
        );
        assert_eq!(
            route(&[0xff, 0xfe, b' '], true),
            Route::Error(400, "Bad Request")
        );
    }
}
