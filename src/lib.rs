//! multitenancy: tenant isolation as a property of PostgreSQL.
//!
//! `lib.rs` only wires the modules together; each capability lives in its own module:
//! - [`gucs`]: every setting the extension registers (one place),
//! - [`context`]: resolves the tenant of the current transaction (the only reader of the
//!   tenant settings) and exposes `current_tenant_id()` / `tenant_set()`,
//! - [`tenants`]: the tenant registry (`tenant_create`, slug rules) and its per-session cache,
//! - [`members`]: members and roles (`member_add`, `has_role`, ...),
//! - [`lifecycle`]: suspend, activate, delete, purge, rename; plans and settings,
//! - [`domains`]: custom domains and host routing,
//! - [`quotas`]: exact per-tenant usage counters, limits and metering,
//! - [`signed`]: signing keys, tenant tokens and `tenant_set_signed` (signed contexts),
//! - [`access`]: who may manage what, audited admin access (`admin_begin`), the audit log,
//! - [`spec`]: the one description of what a protected table looks like,
//! - [`enable`]: `tenant_enable` / `tenant_disable` (which build and remove that shape) and
//!   `tenant_exempt` / `tenant_unexempt`,
//! - [`hardening`]: tenant-scoped unique keys and foreign keys, and the grants an enabled table
//!   may not have,
//! - [`guard`]: the event triggers that keep protected tables protected through later DDL,
//! - [`verify`]: the catalog audit,
//! - [`registry`]: privileged access to the extension's own tables,
//! - [`error`]: the typed error enum and its SQLSTATEs.
use pgrx::prelude::*;

mod access;
mod catalog;
mod context;
mod domains;
mod enable;
mod error;
mod guard;
mod gucs;
mod hardening;
mod lifecycle;
mod members;
mod quotas;
mod registry;
mod signed;
mod spec;
mod tenants;
mod verify;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/model.sql",
    name = "model",
    requires = ["bootstrap", current_tenant_id, current_user_id, access::_readable_tenant, gucs::_base_domain]
);
// The C entry points of src/quotas.rs and src/tenants.rs (trigger functions and
// row_bytes(record), which pgrx's function macros cannot declare).
extension_sql!(
    r#"
CREATE FUNCTION multitenancy.row_bytes(record) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'mt_row_bytes';
COMMENT ON FUNCTION multitenancy.row_bytes(record) IS
    'The size a row counts for in the bytes quota: the uncompressed sizes of its non-null values.';
CREATE FUNCTION multitenancy._usage_row() RETURNS trigger
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'mt_usage_row';
CREATE FUNCTION multitenancy._usage_statement() RETURNS trigger
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'mt_usage_statement';
CREATE FUNCTION multitenancy._registry_changed() RETURNS trigger
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'mt_registry_changed';
"#,
    name = "quota_functions",
    requires = ["bootstrap"]
);
extension_sql_file!("../sql/quotas.sql", name = "quotas", requires = ["model", "quota_functions", current_tenant_id, quotas::_usage_unwritten, quotas::_usage_lock]);
extension_sql_file!("../sql/signing.sql", name = "signing", requires = ["bootstrap"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Before the settings are defined: both look at what the session had set until now.
    signed::init();
    signed::init_session_guard();
    context::init();
    gucs::init();
    guard::init();
    tenants::init();
    access::init();
    quotas::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Signed contexts keep their used-token table in shared memory.
        vec!["shared_preload_libraries = 'multitenancy'"]
    }
}
