//! Tenant-protected tables: [`spec`], the one description of the protected shape; [`enable`],
//! which builds it (`tenant_enable`, `tenant_disable`, exemptions); [`hardening`], the keys and
//! grants beyond the policies; [`busy`], which tables the extension's own DDL is changing;
//! [`guard`], the event triggers that keep the shape through later DDL; and [`verify`], the
//! catalog audit; [`migrations`] adjusts frameworks' DDL and upserts on enabled tables;
//! [`keys`] sets a table's key scope and [`templates`] the rows every tenant gets; [`distribute`]
//! scales enabled tables out with Citus. All
//! compare against `spec` and `hardening`, nothing else.
pub mod busy;
pub mod distribute;
pub mod enable;
pub mod guard;
pub mod hardening;
pub mod keys;
pub mod migrations;
pub mod spec;
pub mod templates;
pub mod verify;
