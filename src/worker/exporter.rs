//! The Prometheus endpoint: a static background worker, registered when
//! `pgflow.metrics_listen` is set, that serves `GET /metrics` (the text of `exposition.rs`)
//! over plain HTTP/1.x, and `GET /`, a status page for people (`status_page.rs`).
//!
//! It connects to no database (only to shared memory, as the launcher does, so that it shows
//! in pg_stat_activity): everything it prints is in shared memory, so a scrape runs no query,
//! takes no table lock and costs O(queues). It serves up to `MAX_CONNECTIONS` connections side
//! by side, from its one thread (a backend must not ereport from another): a `poll` loop over
//! non-blocking sockets, one answer per connection, then close. A connection has one deadline
//! from its accept, not one per read: its request head must arrive whole within
//! `REQUEST_DEADLINE_US` (2 s) and fit in `MAX_REQUEST` bytes, and the whole exchange, the
//! answer and the lingering close included, ends within `EXCHANGE_DEADLINE_US` (10 s) whatever
//! the client does. So a slow or hostile client holds one slot for at most 10 s, never the
//! endpoint, and memory stays bounded (`MAX_CONNECTIONS` answers at most; the largest, for
//! `pgflow.max_queues` queues, is a few MB at the default). Anything it does not serve gets a short HTTP error: 400
//! for what it cannot parse, 404, 405, 408, 431.
//!
//! It is unauthenticated (docs/operations.md): listen on loopback (the example) or a trusted
//! network. On a hot standby it starts only with `pgflow.metrics_on_standby`; otherwise once
//! the server is promoted.
use std::ffi::CStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

use super::{
    exposition, handle_interrupts, micros, now, policy, setup_signals, status_page, SlotState,
    REGISTRY,
};
use crate::guc;
use crate::ipc::stats;

/// Bytes a request (line and headers) may take.
const MAX_REQUEST: usize = 8192;
/// Connections open at once. One more is not accepted: it waits in the kernel's listen backlog
/// (bounded by the kernel, and costing this process nothing) until an open one closes, at most
/// `EXCHANGE_DEADLINE_US` later. Waiting there rather than being refused, a scraper behind
/// a burst of idle connections is answered late instead of not at all.
const MAX_CONNECTIONS: usize = 16;
/// From its accept, a connection has this long (microseconds) to send its request head: then
/// it gets a 408, or is closed silently if it sent nothing.
const REQUEST_DEADLINE_US: i64 = 2_000_000;
/// From its accept, the whole exchange (head, answer, lingering close) ends within this long
/// (microseconds): then the socket is closed, whatever state it is in.
const EXCHANGE_DEADLINE_US: i64 = 10_000_000;
/// The longest one `poll` sleeps (ms): interrupts (SIGTERM, SIGHUP) and the postmaster's death
/// are looked at least this often while connections are open.
const MAX_WAIT_MS: i32 = 1000;

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

/// What the exchange needs of a socket: `TcpStream`, or a fake in the tests.
trait Socket: Read + Write {
    /// Stops sending (the write side's FIN); errors are ignored, as the close follows anyway.
    fn shutdown_write(&mut self);
}

impl Socket for TcpStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Where a connection is in its one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request head, until `REQUEST_DEADLINE_US` from the accept.
    Reading,
    /// Writing the answer (`out[sent..]` is left), until `EXCHANGE_DEADLINE_US`.
    Writing,
    /// The answer is out and the write side shut: discarding what the client still sends, at
    /// most `MAX_REQUEST` bytes, until `EXCHANGE_DEADLINE_US`.
    Lingering,
    /// To be closed.
    Done,
}

/// What reading the head came to, for now.
enum Input {
    /// Nothing more to read without waiting.
    Pending,
    /// The blank line came, or `MAX_REQUEST` bytes did.
    Finished,
    /// The client closed its side, or the read failed.
    Ended,
}

/// One connection's exchange, as plain data: times are microseconds on any clock that does
/// not go back, passed in by the caller.
struct Exchange {
    /// When it was accepted: both deadlines count from here.
    accepted: i64,
    phase: Phase,
    /// The request head so far (at most `MAX_REQUEST` bytes), and whether its blank line came.
    head: Vec<u8>,
    complete: bool,
    /// The answer, and how much of it is sent.
    out: Vec<u8>,
    sent: usize,
    /// Whether the close lingers (a refused request, whose input may not have been read).
    linger: bool,
    /// Bytes discarded while lingering.
    discarded: usize,
}

impl Exchange {
    fn new(accepted: i64) -> Exchange {
        Exchange {
            accepted,
            phase: Phase::Reading,
            head: Vec::new(),
            complete: false,
            out: Vec::new(),
            sent: 0,
            linger: false,
            discarded: 0,
        }
    }

    /// When the current phase's deadline passes: the request deadline while the head is read,
    /// the exchange's after (a `Done` exchange is closed at once, whatever this says).
    fn next_deadline(&self) -> i64 {
        let limit = match self.phase {
            Phase::Reading => REQUEST_DEADLINE_US,
            Phase::Writing | Phase::Lingering | Phase::Done => EXCHANGE_DEADLINE_US,
        };
        self.accepted.saturating_add(limit)
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.next_deadline()
    }

    fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The poll events the exchange waits for.
    fn events(&self) -> libc::c_short {
        match self.phase {
            Phase::Writing => libc::POLLOUT,
            Phase::Reading | Phase::Lingering | Phase::Done => libc::POLLIN,
        }
    }

    /// Moves the exchange on as far as the socket allows without waiting, at `now`: called
    /// when poll reports the socket, or when `expired(now)`. `answer` gives a route's answer
    /// (status line, headers and body).
    fn step<S: Socket>(
        &mut self,
        sock: &mut S,
        now: i64,
        answer: &mut impl FnMut(Route) -> Vec<u8>,
    ) {
        if self.phase == Phase::Reading {
            let finished = match self.read_head(sock) {
                Input::Finished | Input::Ended => true,
                Input::Pending => self.expired(now),
            };
            if finished {
                if self.head.is_empty() {
                    // Connected and said nothing (in time): closed without an answer.
                    self.phase = Phase::Done;
                } else {
                    // An unfinished head is a 408 (or 431 when full).
                    let asked = route(&self.head, self.complete);
                    self.respond(asked, answer);
                }
            }
        }
        if self.phase == Phase::Writing {
            self.write_out(sock);
        }
        if self.phase == Phase::Lingering {
            self.drain(sock);
        }
        // Whatever it is doing, an exchange past its deadline ends (a head still being read
        // is not: it got its 408 above).
        if self.phase != Phase::Reading && self.expired(now) {
            self.phase = Phase::Done;
        }
    }

    fn read_head<S: Read>(&mut self, sock: &mut S) -> Input {
        let mut chunk = [0u8; 1024];
        loop {
            match sock.read(&mut chunk) {
                Ok(0) => return Input::Ended,
                Ok(n) => {
                    if self.received(&chunk[..n]) {
                        return Input::Finished;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Input::Ended,
            }
        }
    }

    /// Takes bytes of the request head (beyond `MAX_REQUEST`, dropped); true once the head is
    /// finished: its blank line came, or `MAX_REQUEST` bytes did.
    fn received(&mut self, data: &[u8]) -> bool {
        // The blank line may straddle the previous bytes: look from three bytes back.
        let from = self.head.len().saturating_sub(3);
        let room = MAX_REQUEST.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        self.complete = self.head[from..].windows(4).any(|w| w == b"\r\n\r\n");
        self.complete || self.head.len() >= MAX_REQUEST
    }

    fn respond(&mut self, route: Route, answer: &mut impl FnMut(Route) -> Vec<u8>) {
        // A refused request's input may not have been read: closing with unread input would
        // reset the connection, and the client could lose the answer. So its close lingers.
        self.linger = matches!(route, Route::Error(..));
        self.out = answer(route);
        self.sent = 0;
        self.head = Vec::new();
        self.phase = Phase::Writing;
    }

    fn write_out<S: Socket>(&mut self, sock: &mut S) {
        while self.sent < self.out.len() {
            match sock.write(&self.out[self.sent..]) {
                Ok(0) => {
                    self.phase = Phase::Done;
                    return;
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.phase = Phase::Done;
                    return;
                }
            }
        }
        self.out = Vec::new();
        self.sent = 0;
        if self.linger {
            // The lingering close: stop sending, then discard what the client still sends.
            sock.shutdown_write();
            self.phase = Phase::Lingering;
        } else {
            self.phase = Phase::Done;
        }
    }

    /// Discards input until the client's end, `MAX_REQUEST` bytes, or nothing more to read.
    fn drain<S: Read>(&mut self, sock: &mut S) {
        let mut sink = [0u8; 1024];
        while self.discarded < MAX_REQUEST {
            match sock.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => self.discarded += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.phase = Phase::Done;
    }
}

/// How long poll may sleep (ms) for a deadline at `deadline`: until it, rounded up so that it
/// has passed when poll times out, and at most `MAX_WAIT_MS`.
fn poll_timeout(deadline: i64, now: i64) -> i32 {
    let ms = deadline.saturating_sub(now).saturating_add(999) / 1000;
    i32::try_from(ms.clamp(0, i64::from(MAX_WAIT_MS))).unwrap_or(MAX_WAIT_MS)
}

/// An answer: status line, headers and (unless for HEAD) the body.
fn response(status: u16, reason: &str, kind: &str, body: &[u8], head: bool) -> Vec<u8> {
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = header.into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
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

/// The workers of the databases served where pgflow is created, for the status page.
fn workers() -> Vec<status_page::Worker> {
    let slots: Vec<super::Slot> = {
        let reg = REGISTRY.share();
        reg.slots
            .iter()
            .filter(|s| s.has_pgflow())
            .copied()
            .collect()
    };
    let t = now();
    slots
        .into_iter()
        .filter(|s| served(s.dboid))
        .map(|s| status_page::Worker {
            database: s.name(),
            state: s.state.label(),
            problem: s.problem(t).unwrap_or_default(),
            links: if s.links_at == 0 || s.links == 0 {
                String::new()
            } else {
                format!(
                    "{} links, {} down, {} waiting, oldest {:.1} s{}",
                    s.links,
                    s.links_down,
                    s.link_backlog,
                    s.link_oldest_age,
                    if s.links_alerting > 0 {
                        format!(", {} past alert_age", s.links_alerting)
                    } else {
                        String::new()
                    }
                )
            },
            links_trouble: s.links_down > 0 || s.links_alerting > 0,
            link_rows: s.link_rows[..usize::from(s.link_rows_n).min(super::LINK_ROWS)]
                .iter()
                .map(|l| {
                    let ago = |at: i64| (at != 0).then(|| (t - at).max(0) as f64 / 1e6);
                    status_page::Link {
                        name: l.name(),
                        remote: l.remote(),
                        state: l.state(),
                        alerting: l.alerting,
                        backlog: l.backlog,
                        oldest_age: l.oldest_age,
                        forwarded: l.forwarded,
                        down_for: ago(l.down_since),
                        last_error_ago: ago(l.last_error_at),
                    }
                })
                .collect(),
        })
        .collect()
}

fn db_name(dboid: u32) -> String {
    let reg = REGISTRY.share();
    reg.slots
        .iter()
        .find(|s| s.state != SlotState::Free && s.dboid == dboid)
        .map_or_else(|| dboid.to_string(), |s| s.name())
}

/// The answer to a request.
fn answer(route: Route, history: &status_page::History) -> Vec<u8> {
    match route {
        Route::Metrics { head } => {
            let text = exposition::render(&served, &|_, _| true, None);
            response(
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                head,
            )
        }
        Route::Page { head } => {
            let page = status_page::render(&stats::snapshot(served), &workers(), &db_name, history);
            response(200, "OK", "text/html; charset=utf-8", page.as_bytes(), head)
        }
        Route::Error(status, reason) => {
            let body = format!("{status} {reason}\n");
            response(
                status,
                reason,
                "text/plain; charset=utf-8",
                body.as_bytes(),
                false,
            )
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
    // The connections' deadlines run on a monotonic clock (microseconds since the start), so
    // that a step of the wall clock can neither hold a connection nor cut one short.
    let epoch = Instant::now();
    let clock = || micros(epoch.elapsed());
    let mut conns: Vec<(TcpStream, Exchange)> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CONNECTIONS + 1);
    loop {
        handle_interrupts();
        if now() - sampled >= status_page::SAMPLE_EVERY_US {
            sampled = now();
            history.sample(&stats::snapshot(served), sampled);
        }
        if conns.is_empty() {
            // Nothing open: wait for a connection, the latch, or a second.
            // SAFETY: the process's own latch, waited on from its only thread; the listener's
            // socket is open for the call.
            unsafe {
                pg_sys::WaitLatchOrSocket(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET
                        | pg_sys::WL_SOCKET_READABLE
                        | pg_sys::WL_TIMEOUT
                        | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    listener.as_raw_fd(),
                    MAX_WAIT_MS.into(),
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        } else {
            // Connections open: poll them (and the listener, while there is room), until the
            // nearest deadline and at most a second.
            let t = clock();
            let nearest = conns
                .iter()
                .map(|(_, x)| x.next_deadline())
                .min()
                .unwrap_or(t);
            let timeout = poll_timeout(nearest, t);
            fds.clear();
            if conns.len() < MAX_CONNECTIONS {
                fds.push(libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let first = fds.len();
            fds.extend(conns.iter().map(|(stream, x)| libc::pollfd {
                fd: stream.as_raw_fd(),
                events: x.events(),
                revents: 0,
            }));
            // SAFETY: `fds` holds `fds.len()` initialised pollfd structs, alive and not
            // otherwise borrowed during the call; their descriptors are open (owned by
            // `listener` and `conns`, which outlive the call).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            // A signal (SIGTERM, SIGHUP) ends poll with EINTR: a wake-up like any other, as the
            // next handle_interrupts() sees to it. Any other failure waits the timeout below
            // rather than spin.
            let pause =
                if rc < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                    timeout
                } else {
                    0
                };
            // The postmaster's death, as WL_EXIT_ON_PM_DEATH sees it (the process exits), and
            // the latch, reset as after every wait.
            // SAFETY: the process's own latch, waited on from its only thread.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    pause.into(),
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            let t = clock();
            let mut respond = |r: Route| answer(r, &history);
            for ((stream, x), fd) in conns.iter_mut().zip(&fds[first..]) {
                if fd.revents != 0 || x.expired(t) {
                    x.step(stream, t, &mut respond);
                }
            }
            conns.retain(|(_, x)| !x.done());
        }
        // Every connection waiting now, while there is room; the rest stay in the backlog.
        while conns.len() < MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept() else {
                break;
            };
            // Linux's accept does not pass on O_NONBLOCK from the listener.
            if stream.set_nonblocking(true).is_ok() {
                conns.push((stream, Exchange::new(clock())));
            }
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

    /// A socket for the exchange's tests: `input` is what the client has sent and not yet been
    /// read (`eof`: and then it closed), `room` how many more bytes it takes before a write
    /// would block, `taken` what it received, `shut` whether the write side was shut.
    #[derive(Default)]
    struct Fake {
        input: Vec<u8>,
        eof: bool,
        room: usize,
        taken: Vec<u8>,
        shut: bool,
    }

    impl Fake {
        fn new(input: &[u8]) -> Fake {
            Fake {
                input: input.to_vec(),
                room: usize::MAX,
                ..Fake::default()
            }
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = self.input[n..].to_vec();
            Ok(n)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Socket for Fake {
        fn shutdown_write(&mut self) {
            self.shut = true;
        }
    }

    /// The answer the tests' exchanges write: the route, spelt out.
    fn spelt(r: Route) -> Vec<u8> {
        format!("{r:?}").into_bytes()
    }

    const S: i64 = 1_000_000;

    #[test]
    fn a_request_is_answered_and_closed() {
        let mut x = Exchange::new(5 * S);
        let mut f = Fake::new(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(x.events(), libc::POLLIN);
        x.step(&mut f, 5 * S + 1000, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        assert_eq!(f.taken, b"Metrics { head: false }");
        assert!(!f.shut, "an answered request closes at once");
    }

    #[test]
    fn the_blank_line_may_come_in_pieces() {
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"GET / HTTP/1.1\r\n\r");
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(x.phase, Phase::Reading);
        f.input.extend_from_slice(b"\n");
        x.step(&mut f, 2000, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        assert_eq!(f.taken, b"Page { head: false }");
    }

    #[test]
    fn a_trickling_client_gets_its_408_at_the_request_deadline_from_its_accept() {
        // A byte every 1.5 s: each read is quick, but the head is due 2 s after the accept.
        let mut x = Exchange::new(10 * S);
        let mut f = Fake::new(b"G");
        x.step(&mut f, 10 * S, &mut spelt);
        assert_eq!(x.next_deadline(), 10 * S + REQUEST_DEADLINE_US);
        f.input.extend_from_slice(b"E");
        x.step(&mut f, 10 * S + 1_500_000, &mut spelt);
        assert_eq!(x.phase, Phase::Reading);
        assert_eq!(x.next_deadline(), 10 * S + REQUEST_DEADLINE_US);
        assert!(!x.expired(10 * S + REQUEST_DEADLINE_US - 1));
        assert!(x.expired(10 * S + REQUEST_DEADLINE_US));
        x.step(&mut f, 10 * S + REQUEST_DEADLINE_US, &mut spelt);
        assert_eq!(f.taken, b"Error(408, \"Request Timeout\")");
        // Then the lingering close, under the exchange's deadline.
        assert!(f.shut);
        assert_eq!(x.phase, Phase::Lingering);
        assert_eq!(x.events(), libc::POLLIN);
        assert_eq!(x.next_deadline(), 10 * S + EXCHANGE_DEADLINE_US);
        f.input.extend_from_slice(b"T");
        x.step(&mut f, 13 * S, &mut spelt);
        assert_eq!(x.phase, Phase::Lingering);
        // A client that keeps the connection, sending a byte now and then, is closed at it.
        f.input.extend_from_slice(b" ");
        x.step(&mut f, 10 * S + EXCHANGE_DEADLINE_US, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
    }

    #[test]
    fn a_silent_client_is_closed_without_an_answer() {
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"");
        x.step(&mut f, REQUEST_DEADLINE_US - 1, &mut spelt);
        assert_eq!(x.phase, Phase::Reading);
        x.step(&mut f, REQUEST_DEADLINE_US, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        assert!(f.taken.is_empty() && !f.shut);
        // Nor one that closes having said nothing.
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"");
        f.eof = true;
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        assert!(f.taken.is_empty());
    }

    #[test]
    fn a_head_cut_short_gets_408_and_one_too_large_431() {
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"GET /metrics HTTP/1.1\r\n");
        f.eof = true;
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(f.taken, b"Error(408, \"Request Timeout\")");
        let mut x = Exchange::new(0);
        let mut f = Fake::new(&[b'a'; MAX_REQUEST + 100]);
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(f.taken, b"Error(431, \"Request Header Fields Too Large\")");
        assert!(f.shut);
    }

    #[test]
    fn the_lingering_close_discards_at_most_max_request_bytes() {
        let mut x = Exchange::new(0);
        let mut request = b"POST /metrics HTTP/1.1\r\n\r\n".to_vec();
        request.extend_from_slice(&[b'x'; 3 * MAX_REQUEST]);
        let mut f = Fake::new(&request);
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(f.taken, b"Error(405, \"Method Not Allowed\")");
        assert!(f.shut);
        assert_eq!(x.phase, Phase::Done);
        assert!(!f.input.is_empty(), "read all {} bytes", request.len());
        // And a client's end ends it at once.
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"GET /nope HTTP/1.1\r\n\r\n");
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(x.phase, Phase::Lingering);
        f.eof = true;
        x.step(&mut f, 2000, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
    }

    #[test]
    fn an_answer_not_taken_is_dropped_at_the_exchange_deadline() {
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"HEAD / HTTP/1.0\r\n\r\n");
        f.room = 4;
        x.step(&mut f, 1000, &mut spelt);
        assert_eq!(x.phase, Phase::Writing);
        assert_eq!(x.events(), libc::POLLOUT);
        assert_eq!(x.next_deadline(), EXCHANGE_DEADLINE_US);
        assert_eq!(f.taken, b"Page");
        f.room = 3;
        x.step(&mut f, 5 * S, &mut spelt);
        assert_eq!(f.taken, b"Page { ");
        assert_eq!(x.phase, Phase::Writing);
        x.step(&mut f, EXCHANGE_DEADLINE_US - 1, &mut spelt);
        assert_eq!(x.phase, Phase::Writing);
        x.step(&mut f, EXCHANGE_DEADLINE_US, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        // Taken in pieces before it, the answer is whole.
        let mut x = Exchange::new(0);
        let mut f = Fake::new(b"HEAD / HTTP/1.0\r\n\r\n");
        f.room = 4;
        x.step(&mut f, 1000, &mut spelt);
        f.room = usize::MAX;
        x.step(&mut f, 2000, &mut spelt);
        assert_eq!(x.phase, Phase::Done);
        assert_eq!(f.taken, b"Page { head: true }");
    }

    #[test]
    fn poll_sleeps_until_the_nearest_deadline_and_at_most_a_second() {
        assert_eq!(poll_timeout(10 * S, 0), MAX_WAIT_MS);
        assert_eq!(poll_timeout(i64::MAX, i64::MIN), MAX_WAIT_MS);
        assert_eq!(poll_timeout(1500, 0), 2);
        assert_eq!(poll_timeout(1000, 0), 1);
        assert_eq!(poll_timeout(1, 0), 1);
        assert_eq!(poll_timeout(0, 0), 0);
        assert_eq!(poll_timeout(0, 5 * S), 0);
        assert_eq!(poll_timeout(i64::MIN, i64::MAX), 0);
    }

    #[test]
    fn answers_keep_their_format() {
        assert_eq!(
            response(
                404,
                "Not Found",
                "text/plain; charset=utf-8",
                b"404 Not Found\n",
                false
            ),
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n"
        );
        assert_eq!(
            response(200, "OK", "text/html", b"<p>", true),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\
              Connection: close\r\n\r\n"
        );
    }
}
