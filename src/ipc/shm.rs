//! Shared-memory regions sized at server start: a header `H` and `len` entries `E` behind one
//! LWLock of their own. pgrx's `PgLwLock<T>` needs a size known at compile time; these take
//! theirs from a setting (`pgflow.max_queues`, `max_connections`) when the postmaster asks
//! for shared memory.
//!
//! Each region is requested in `shmem_request_hook` (its size and a named LWLock tranche) and
//! found or made in `shmem_startup_hook`, which the postmaster runs again after a crash
//! restart; children inherit the address through fork. Entries start as `E::default()`.
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, Ordering};

use pgrx::pg_sys;

/// The start of a region: its lock and its length, then the header; the entries follow at the
/// first offset aligned for `E`.
#[repr(C)]
struct Start<H> {
    lock: *mut pg_sys::LWLock,
    len: usize,
    head: UnsafeCell<H>,
}

/// A region: `static T: Region<H, E> = Region::new(c"name")`, then `T.request(len)` from the
/// request hook and `T.startup()` from the startup hook (see `ipc::init`).
pub struct Region<H: 'static, E: 'static> {
    name: &'static CStr,
    at: AtomicPtr<Start<H>>,
    /// The length asked for, kept from the request to the startup.
    asked: std::sync::atomic::AtomicUsize,
    _e: PhantomData<E>,
}

// SAFETY: the pointer is set in the postmaster before any child exists (and again after a
// crash restart, when none runs); every access to the data goes through the LWLock.
unsafe impl<H, E> Sync for Region<H, E> {}

const fn entries_offset<H, E>() -> usize {
    let s = size_of::<Start<H>>();
    let a = align_of::<E>();
    s.div_ceil(a) * a
}

impl<H: Default, E: Default> Region<H, E> {
    pub const fn new(name: &'static CStr) -> Self {
        Region {
            name,
            at: AtomicPtr::new(std::ptr::null_mut()),
            asked: std::sync::atomic::AtomicUsize::new(0),
            _e: PhantomData,
        }
    }

    /// The bytes a region of `len` entries takes.
    pub const fn bytes(len: usize) -> usize {
        entries_offset::<H, E>() + len * size_of::<E>()
    }

    /// From `shmem_request_hook`: asks for the space and the lock.
    ///
    /// # Safety
    /// Only from the postmaster's shared-memory request hook.
    pub unsafe fn request(&self, len: usize) {
        self.asked.store(len, Ordering::SeqCst);
        unsafe {
            pg_sys::RequestAddinShmemSpace(Self::bytes(len));
            pg_sys::RequestNamedLWLockTranche(self.name.as_ptr(), 1);
        }
    }

    /// From `shmem_startup_hook`: finds the region, or makes it with default entries.
    ///
    /// # Safety
    /// Only from the shared-memory startup hook, after `request`.
    pub unsafe fn startup(&self) {
        let len = self.asked.load(Ordering::SeqCst);
        unsafe {
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let p = pg_sys::ShmemInitStruct(self.name.as_ptr(), Self::bytes(len), &mut found)
                .cast::<Start<H>>();
            if !found {
                p.write(Start {
                    lock: &raw mut (*pg_sys::GetNamedLWLockTranche(self.name.as_ptr())).lock,
                    len,
                    head: UnsafeCell::new(H::default()),
                });
                let e = p.cast::<u8>().add(entries_offset::<H, E>()).cast::<E>();
                for i in 0..len {
                    e.add(i).write(E::default());
                }
            }
            self.at.store(p, Ordering::SeqCst);
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

impl<H, E> Region<H, E> {
    fn start(&self) -> *mut Start<H> {
        let p = self.at.load(Ordering::Relaxed);
        assert!(
            !p.is_null(),
            "pgflow: shared memory used before its startup"
        );
        p
    }

    /// How many entries the region has (0 before its startup).
    pub fn size(&self) -> usize {
        let p = self.at.load(Ordering::Relaxed);
        if p.is_null() {
            0
        } else {
            unsafe { (*p).len }
        }
    }

    fn parts(&self) -> (*mut pg_sys::LWLock, *mut H, *mut E, usize) {
        let p = self.start();
        unsafe {
            let e = p.cast::<u8>().add(entries_offset::<H, E>()).cast::<E>();
            ((*p).lock, (*p).head.get(), e, (*p).len)
        }
    }

    /// The region under the lock in shared mode.
    pub fn share(&self) -> Shared<'_, H, E> {
        let (lock, head, e, len) = self.parts();
        unsafe {
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
            Shared {
                head: &*head,
                entries: std::slice::from_raw_parts(e, len),
                lock,
            }
        }
    }

    /// The region under the lock in exclusive mode.
    pub fn exclusive(&self) -> Exclusive<'_, H, E> {
        let (lock, head, e, len) = self.parts();
        unsafe {
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            Exclusive {
                head: &mut *head,
                entries: std::slice::from_raw_parts_mut(e, len),
                lock,
            }
        }
    }
}

/// Releases the lock, unless an ERROR is unwinding: Postgres's error recovery has reset the
/// interrupt holdoff count and releases every LWLock itself (pgrx's guards do the same).
fn release(lock: *mut pg_sys::LWLock) {
    unsafe {
        if pg_sys::InterruptHoldoffCount > 0 {
            pg_sys::LWLockRelease(lock);
        }
    }
}

/// A region held in shared mode.
pub struct Shared<'a, H, E> {
    pub head: &'a H,
    pub entries: &'a [E],
    lock: *mut pg_sys::LWLock,
}

impl<H, E> Drop for Shared<'_, H, E> {
    fn drop(&mut self) {
        release(self.lock);
    }
}

/// A region held in exclusive mode.
pub struct Exclusive<'a, H, E> {
    pub head: &'a mut H,
    pub entries: &'a mut [E],
    lock: *mut pg_sys::LWLock,
}

impl<H, E> Drop for Exclusive<'_, H, E> {
    fn drop(&mut self) {
        release(self.lock);
    }
}
