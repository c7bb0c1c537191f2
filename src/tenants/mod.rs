//! The tenant capabilities: creating tenants ([`create`]), their members ([`members`]), their
//! life (suspend, delete, purge, rename, plans, settings: [`lifecycle`]) and custom domains
//! ([`domains`]); and [`access`], the layer below them all, which decides who may manage what
//! and writes the audit log. Each authorises the caller, then runs one `_`-prefixed SQL function
//! (`sql/<capability>.sql`) as the registry owner and audits the change.
pub mod access;
pub mod create;
pub mod domains;
pub mod lifecycle;
pub mod members;
pub mod moving;
