//! The shims behind long-poll reads and announcements (`ipc::waiters`, `ipc::notify`).
use pgrx::prelude::*;

use crate::ipc::{notify, preloaded, waiters};

/// Registers this backend as a reader of `queue_id` until `_wait_end` or the end of the
/// transaction. False when it cannot be woken (not preloaded, or the table is full): the
/// caller then polls.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _wait_begin(queue_id: i32) -> bool {
    waiters::begin(queue_id)
}

/// Ends this backend's registration (also done at the end of the transaction).
#[pg_extern(volatile, parallel_unsafe)]
fn _wait_end() {
    waiters::end();
}

/// Sleeps until `until`, a wake-up, or an interrupt (a cancel or statement_timeout raises
/// here); at most a short poll interval when `woken` is false. False when the reader must stop
/// waiting: the extension, its schema or the database is being dropped.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _wait_for(until: TimestampWithTimeZone, woken: bool) -> bool {
    if waiters::released() {
        return false;
    }
    waiters::sleep_until(until.into(), woken);
    !waiters::released()
}

/// 0.1.0's `_wait_sleep`, kept for its install script until `ALTER EXTENSION pgflow UPDATE`
/// replaces it with `_wait_for` (no SQL of its own in 0.2.0).
#[pg_extern(volatile, strict, parallel_unsafe, sql = false)]
fn _wait_sleep(until: TimestampWithTimeZone, woken: bool) {
    waiters::sleep_until(until.into(), woken);
}

/// Announces that this transaction made messages of a queue deliverable (a send, `set_vt` 0, a
/// redrive, a group advance): its commit wakes the queue's waiting readers and, for a
/// notify-enabled queue, LISTEN clients (throttled). The one call every such path makes.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _announce(queue_id: i32, queue_name: &str, notify: bool) {
    waiters::wake_on_commit(queue_id);
    if notify {
        notify::send(queue_id, queue_name);
    }
}

/// Forgets a dropped queue's throttle state (its id may be reused after DROP EXTENSION).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _notify_forget(queue_id: i32) {
    if preloaded() {
        notify::forget(queue_id);
    }
}
