//! Who is calling: the role model's checks (docs/operations.md, "Roles and grants").
//!
//! Every user-facing function is `SECURITY DEFINER` (owned by `pgflow_owner`, a role with no
//! other power), so inside it `current_user` is the owner. The caller is the role the session
//! runs as, `SET ROLE` included: Postgres's outer user id, which a security-definer call does
//! not change.
use pgrx::prelude::*;

/// What the calling role may do on every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Only what its per-queue grants say.
    Grants = 0,
    /// A member of pg_monitor: sees every queue's figures, but no message.
    Monitor = 1,
    /// A superuser or a member of pgflow_admin: everything.
    Admin = 2,
}

fn role(name: &std::ffi::CStr) -> pg_sys::Oid {
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

/// The calling role (outside any security-definer function).
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

fn member_of(user: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    let r = role(name);
    r != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(user, r) }
}

pub fn class() -> Class {
    let user = caller();
    if unsafe { pg_sys::superuser_arg(user) } || member_of(user, c"pgflow_admin") {
        Class::Admin
    } else if member_of(user, c"pg_monitor") {
        Class::Monitor
    } else {
        Class::Grants
    }
}

/// The calling role (for the per-queue grant check).
#[pg_extern(stable, parallel_safe)]
fn _caller() -> pg_sys::Oid {
    caller()
}

/// 2 when the caller may do everything (a superuser, or a member of pgflow_admin), 1 when it
/// may see every queue's figures (a member of pg_monitor), else 0: its grants decide.
#[pg_extern(stable, parallel_safe)]
fn _caller_class() -> i32 {
    class() as i32
}
