//! multitenancy: tenant isolation as a property of PostgreSQL.
//!
//! `lib.rs` only wires the modules together. They form layers, each importing only its own
//! layer and the ones below (checked by `pgrx-tests/tests/architecture.rs`):
//!
//! 1. leaves — [`error`] (the one error catalogue), [`gucs`] (every setting), [`uuid`],
//!    [`catalog`] (relations and what reads what);
//! 2. [`registry`] — the extension's own tables as the registry owner reads and writes them, and
//!    the tenant registry's per-session cache ([`registry::tenants`]);
//! 3. [`context`] — which tenant (and user) the transaction acts for: plain settings, claims,
//!    signed tokens, admin mode; `current_tenant_id()`;
//! 4. [`tenants::access`] — who may manage what, the audit log;
//! 5. the capabilities — [`tenants`] (create, members, lifecycle, domains), [`signing`] (keys and
//!    tokens), [`tables`] (the protected shape, tenant_enable, hardening, the DDL guard,
//!    verify()), [`quotas`];
//! 6. wiring — [`xact`] (the transaction callbacks), [`hooks`] (the utility and parse-analysis
//!    hooks) and this file.
//!
//! Each module's SQL lives in `sql/<capability>.sql` beside it; README's "Development" section
//! maps capability to Rust, SQL and tests.
use pgrx::prelude::*;

mod catalog;
mod citus;
mod context;
mod error;
mod gucs;
mod hooks;
mod quotas;
mod registry;
mod signing;
mod tables;
mod tenants;
mod uuid;
mod xact;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
// SQL functions check the functions they call when they are created: each file requires those.
extension_sql_file!("../sql/tenants.sql", name = "tenants", requires = ["bootstrap", current_user_id]);
extension_sql_file!("../sql/members.sql", name = "members", requires = ["tenants", tenants::access::_readable_tenant]);
extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["tenants", current_tenant_id, tenants::access::_readable_tenant]
);
extension_sql_file!(
    "../sql/domains.sql",
    name = "domains",
    requires = ["tenants", tenants::access::_readable_tenant, gucs::_base_domain]
);
extension_sql_file!(
    "../sql/quotas.sql",
    name = "quotas",
    requires = [
        "tenants",
        "quotas_counting",
        current_tenant_id,
        quotas::_usage_unwritten,
        quotas::_usage_lock,
        quotas::_usage_actual,
        quotas::_usage_actual_in,
        quotas::_usage_live,
        quotas::_usage_reconcile,
        quotas::_usage_start
    ]
);
extension_sql_file!("../sql/signing.sql", name = "signing", requires = ["bootstrap"]);
extension_sql_file!("../sql/tables.sql", name = "tables", requires = ["bootstrap"]);
extension_sql_file!("../sql/moving.sql", name = "moving", requires = ["lifecycle", "quotas"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);
// (sql/bootstrap.sql's registry tables come first; the C trigger functions are declared beside
// their Rust: quotas.rs and registry/tenants.rs.)

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Before the settings are defined: both look at what the session had set until now.
    context::signed::init();
    context::init();
    gucs::init();
    hooks::init();
    registry::tenants::init();
    quotas::init();
    xact::init();
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
