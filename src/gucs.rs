//! Every setting the extension registers. Only [`crate::context`] reads the tenant settings;
//! other modules ask it for the tenant instead of reading them.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{c_char, CString};

/// `multitenancy.tenant_id`: the tenant of the current transaction, as a uuid.
pub static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub const TENANT_ID_NAME: &std::ffi::CStr = c"multitenancy.tenant_id";

pub fn init() {
    GucRegistry::define_string_guc(
        TENANT_ID_NAME,
        c"Tenant of the current transaction (a tenant uuid).",
        c"Set it per transaction with SET LOCAL multitenancy.tenant_id or multitenancy.tenant_set(). \
          Row-level security on tenant-enabled tables compares tenant_id with it; empty means no \
          tenant, and queries on tenant-enabled tables then fail.",
        &TENANT_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The raw value of `multitenancy.tenant_id`, borrowed from the GUC machinery without copying.
/// Valid until the setting next changes, so callers must finish with it before running SQL.
pub fn tenant_id_raw() -> *const c_char {
    // SAFETY: the GUC machinery keeps this pointer either NULL or pointing at a NUL-terminated
    // string it owns; we read it on the backend's main thread.
    unsafe { *TENANT_ID.as_ptr() }
}
