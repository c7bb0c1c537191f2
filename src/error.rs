//! Every error the extension raises, with its SQLSTATE, message, detail and hint.
//!
//! Only standard SQLSTATEs are used. pgrx re-raises a Postgres error that crosses one of its FFI
//! boundaries (an SPI call, say) through a closed enum that maps unknown codes to XX000, so a
//! custom class such as `MT001` would not survive being raised inside a statement that
//! `tenant_enable` runs. README's "Error codes" table lists these codes; keep the two in step.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

#[derive(Debug)]
pub enum MtError {
    /// `multitenancy.tenant_id` is unset or empty.
    NoContext,
    /// A query reached a Citus worker without the tenant the coordinator resolved
    /// (`multitenancy.cluster_tenant`).
    NoClusterContext,
    /// The context's setting (`multitenancy.tenant_id`, or the claims setting) was set for the
    /// session in an earlier transaction.
    StaleSessionContext {
        setting: String,
    },
    /// A transaction that has a tenant context tried to switch to another tenant.
    OneTenantPerTransaction {
        current: String,
        requested: String,
    },
    /// A plan made with one tenant as its constant was about to run for another
    /// (`context::planning::check`): a context change the extension did not see.
    PlanForAnotherTenant {
        planned: String,
        current: String,
    },
    /// `multitenancy.tenant_id` holds something that is not a uuid.
    MalformedContext {
        value: String,
    },
    /// A transaction-local setter was called outside a transaction block.
    NotInTransactionBlock {
        function: &'static str,
    },
    /// No tenant with that id or slug.
    TenantNotFound {
        tenant: String,
    },
    /// The tenant exists but is suspended or deleted.
    TenantNotActive {
        slug: String,
        status: String,
    },
    /// A slug breaks the slug rules.
    InvalidSlug {
        slug: String,
        reason: &'static str,
    },
    /// No slug was given and none can be derived from the name.
    SlugUnderivable {
        name: String,
    },
    /// Another tenant already has this slug.
    DuplicateSlug {
        slug: String,
    },
    /// A tenant name that is empty or too long.
    InvalidName {
        reason: &'static str,
    },
    /// A plan name that breaks the plan-name rules.
    InvalidPlan {
        plan: String,
    },
    /// `tenant_enable` on something that is not an ordinary or partitioned table.
    WrongRelationKind {
        table: String,
        kind: &'static str,
    },
    /// `tenant_enable` on a table the extension or PostgreSQL owns.
    ReservedSchema {
        table: String,
        schema: String,
    },
    /// The table has a `tenant_id` column that is not of type uuid.
    TenantColumnType {
        table: String,
        found: String,
    },
    /// Existing rows have no tenant and no `backfill_tenant` was given.
    BackfillRequired {
        table: String,
        rows: i64,
        column_exists: bool,
    },
    /// DDL that would leave a tenant-enabled table unprotected (the DDL guard).
    GuardWeakens {
        command: String,
        table: String,
        what: String,
        fix: Option<String>,
    },
    /// A view that is not security_invoker over a tenant-enabled table.
    LeakyView {
        view: String,
        table: String,
    },
    /// A materialized view over a tenant-enabled table.
    MaterializedView {
        view: String,
        table: String,
    },
    /// A materialized view that calls a function which may read tenant-enabled tables.
    MaterializedViewFunction {
        view: String,
        function: String,
    },
    /// A publication that would publish a tenant-enabled table.
    PublishesTenantTable {
        publication: String,
        table: String,
    },
    /// A transaction created tables in guarded schemas and neither enabled nor exempted them.
    UnprotectedAtCommit {
        tables: Vec<String>,
    },
    /// `tenant_enable` on an exempt table.
    TableExempt {
        table: String,
        reason: String,
    },
    /// `tenant_exempt` on a tenant-enabled table.
    TableEnabled {
        table: String,
    },
    /// `tenant_exempt` without a reason.
    MissingReason,
    /// A registry change on a table the caller does not own.
    NotTableOwner {
        table: String,
        function: &'static str,
    },
    /// A Citus function that runs SQL text on other nodes, called by a role row level security
    /// binds, on a coordinator with the extension.
    CitusRemoteSql {
        function: String,
    },
    /// A SET statement Citus would forward to the workers as text, by a role row level security
    /// binds.
    CitusForwardedSet,
    /// `tenant_distribute` cannot bring a table into the shape Citus distributes.
    CannotDistribute {
        table: String,
        reason: String,
        hint: String,
    },
    /// A constraint cannot be rebuilt with tenant_id.
    CannotHarden {
        table: String,
        object: String,
        reason: String,
    },
    /// `multitenancy.user_id` is unset or empty where a user is required.
    NoUserContext,
    /// `multitenancy.user_id` holds something that is not a uuid.
    MalformedUserContext {
        value: String,
    },
    /// `multitenancy.tenant_id` names no tenant.
    ContextTenantUnknown {
        id: String,
    },
    /// The user in `multitenancy.user_id` is not a member of the tenant.
    NotAMember {
        tenant: String,
        user: String,
    },
    /// A management call on a tenant the caller may not manage.
    NotAuthorized {
        action: &'static str,
        tenant: String,
        reason: String,
    },
    /// `admin_begin` by a role that is not a member of multitenancy_admin.
    NotAdmin {
        role: String,
    },
    /// An argument that breaks a rule; the message says which.
    InvalidArgument {
        message: String,
        hint: String,
    },
    /// A role name that is not owner, admin, member or guest.
    InvalidRole {
        role: String,
    },
    /// No tenant answers to a host name.
    HostNotFound {
        host: String,
    },
    /// A write or a metered use that would take a tenant past a limit.
    QuotaExceeded {
        tenant: String,
        key: String,
        metered: bool,
        used: i64,
        adding: i64,
        quota: i64,
    },
    /// A tenant token that does not verify.
    BadToken {
        reason: String,
    },
    /// The used-token table has no free slot for a token's id.
    TooManyTokens,
    /// `tenant_token` with no active signing key.
    NoSigningKey,
    /// Signed contexts without `shared_preload_libraries`.
    SignedNeedsPreload,
    /// `multitenancy.require_signed` is on and no signed context was set in this transaction.
    NoSignedContext {
        preloaded: bool,
    },
    /// Claims mode, and the claims name no tenant (`present`: the claims setting has a value).
    NoClaimsContext {
        setting: String,
        claim: String,
        present: bool,
    },
    /// Claims mode, and the claims are not usable.
    InvalidClaims {
        setting: String,
        reason: String,
    },
    /// `tenant_set` where the context comes from elsewhere.
    ContextFixed {
        by: String,
    },
    /// An operator-only action by a caller who is not one.
    OperatorsOnly {
        action: &'static str,
        why: &'static str,
    },
    /// A relation (given as a regclass or an oid) that does not exist.
    NoSuchRelation {
        oid: u32,
    },
    /// A required argument is NULL.
    NullArgument {
        argument: &'static str,
    },
    /// One of the extension's trigger functions attached where it was not made for.
    TriggerMisused {
        function: &'static str,
        table: String,
        reason: String,
    },
    /// A write to a tenant-enabled table in read-only admin mode.
    AdminReadOnly {
        table: String,
    },
    /// Session state that would outlive a transaction in a session that requires signed contexts.
    SignedSessionState {
        what: String,
        hint: String,
    },
    /// DDL the guard cannot check (no event trigger fires for it).
    GuardCannotCheck {
        what: String,
        hint: String,
    },
    /// `DROP EXTENSION multitenancy` while enabled tables have permissive policies of their own,
    /// which would remain without the isolation policy (`table (policy)` each).
    DropWouldOpen {
        command: String,
        tables: Vec<String>,
    },
    /// A domain another tenant has registered.
    DomainTaken {
        domain: String,
    },
    /// `domain_verify` with a token that is not the domain's.
    WrongVerificationToken {
        domain: String,
    },
    /// UPDATE, DELETE or TRUNCATE of the audit log by anyone but a superuser.
    AuditLogAppendOnly,
    /// A lifecycle change to the status the tenant already has.
    StatusUnchanged {
        slug: String,
        status: String,
    },
    /// `tenant_suspend` of a tenant that is not active.
    CannotSuspend {
        slug: String,
        status: String,
    },
    /// `tenant_purge` of a tenant that is not deleted.
    CannotPurge {
        slug: String,
        status: String,
    },
    /// `tenant_purge` without the tenant's slug as confirmation.
    PurgeUnconfirmed,
    /// `tenant_purge` where tables that are not tenant-enabled reference the tenant's rows.
    PurgeReferenced {
        slug: String,
        tables: String,
    },
    /// A plan that does not exist.
    PlanNotFound {
        plan: String,
    },
    /// Plan limits or features that are not JSON objects, or limits that are not whole numbers.
    InvalidPlanLimits {
        reason: &'static str,
    },
    /// A change of a tenant's owners by someone who is not one.
    OwnersOnly {
        action: &'static str,
        slug: String,
    },
    /// `member_add` of a member.
    AlreadyMember {
        user: String,
        slug: String,
    },
    /// Removing or demoting the last owner.
    LastOwner {
        verb: String,
        slug: String,
    },
    /// A member change of a user who is not a member.
    MemberNotFound {
        user: String,
        slug: String,
    },
    /// A `rows:<table>` quota key naming no tenant-enabled table.
    QuotaKeyNoTable {
        key: String,
    },
    /// A quota key that breaks the key rules.
    InvalidQuotaKey {
        key: String,
    },
    /// `signing_key_add` with a name in use (retired or not).
    SigningKeyExists {
        name: String,
    },
    /// A signing key that does not exist.
    SigningKeyNotFound {
        name: String,
    },
    /// An SPI call failed in a way that is a bug in the extension, not bad input.
    /// An archive this database cannot import: its format or extension version is newer.
    ArchiveUnsupported {
        reason: String,
        hint: String,
    },
    /// An archive's tables do not fit this database's (see `import_check`).
    ArchiveMismatch {
        problems: Vec<String>,
        missing_table: bool,
    },
    /// A write of an enabled table in a transaction that exports a tenant.
    ExportReadOnly {
        table: String,
    },
    /// A move function called in the wrong state (no import begun, one already begun).
    MoveState {
        reason: String,
        hint: String,
    },
    Internal {
        context: &'static str,
        error: String,
    },
}

pub type Result<T> = std::result::Result<T, MtError>;

const HINT_SET_CONTEXT: &str = "Inside the transaction, call SELECT multitenancy.tenant_set('<tenant slug or id>'), \
or SET LOCAL multitenancy.tenant_id = '<tenant uuid>'.";

impl MtError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            MtError::NoContext
            | MtError::NoClusterContext
            | MtError::StaleSessionContext { .. }
            | MtError::OneTenantPerTransaction { .. }
            | MtError::MalformedContext { .. }
            | MtError::TenantNotActive { .. }
            | MtError::NoUserContext
            | MtError::MalformedUserContext { .. }
            | MtError::ContextTenantUnknown { .. }
            | MtError::NotAMember { .. }
            | MtError::BadToken { .. }
            | MtError::NoSignedContext { .. }
            | MtError::NoClaimsContext { .. }
            | MtError::InvalidClaims { .. }
            | MtError::ContextFixed { .. }
            | MtError::PlanForAnotherTenant { .. } => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            MtError::TooManyTokens => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            MtError::NoSigningKey | MtError::SignedNeedsPreload => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MtError::NotAuthorized { .. } | MtError::NotAdmin { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            MtError::InvalidArgument { .. } | MtError::InvalidRole { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            MtError::HostNotFound { .. } => ERRCODE_UNDEFINED_OBJECT,
            MtError::NotInTransactionBlock { .. } => ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            MtError::TenantNotFound { .. } => ERRCODE_UNDEFINED_OBJECT,
            MtError::InvalidSlug { .. }
            | MtError::SlugUnderivable { .. }
            | MtError::InvalidName { .. }
            | MtError::InvalidPlan { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            MtError::DuplicateSlug { .. } => ERRCODE_UNIQUE_VIOLATION,
            MtError::WrongRelationKind { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            MtError::ReservedSchema { .. }
            | MtError::GuardWeakens { .. }
            | MtError::LeakyView { .. }
            | MtError::MaterializedView { .. }
            | MtError::MaterializedViewFunction { .. }
            | MtError::PublishesTenantTable { .. }
            | MtError::UnprotectedAtCommit { .. }
            | MtError::NotTableOwner { .. }
            | MtError::CitusRemoteSql { .. }
            | MtError::CitusForwardedSet => ERRCODE_INSUFFICIENT_PRIVILEGE,
            MtError::TableExempt { .. }
            | MtError::TableEnabled { .. }
            | MtError::CannotHarden { .. }
            | MtError::CannotDistribute { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MtError::MissingReason => ERRCODE_INVALID_PARAMETER_VALUE,
            MtError::TenantColumnType { .. } => ERRCODE_DATATYPE_MISMATCH,
            MtError::BackfillRequired { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MtError::QuotaExceeded { .. } => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            MtError::NullArgument { .. } => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            MtError::NoSuchRelation { .. } => ERRCODE_UNDEFINED_TABLE,
            MtError::OperatorsOnly { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            MtError::TriggerMisused { .. } | MtError::SignedSessionState { .. } | MtError::GuardCannotCheck { .. } => {
                ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            MtError::DropWouldOpen { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            MtError::AdminReadOnly { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            MtError::DomainTaken { .. } | MtError::AlreadyMember { .. } => ERRCODE_UNIQUE_VIOLATION,
            MtError::WrongVerificationToken { .. } => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            MtError::AuditLogAppendOnly | MtError::OwnersOnly { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            MtError::StatusUnchanged { .. }
            | MtError::CannotSuspend { .. }
            | MtError::CannotPurge { .. }
            | MtError::LastOwner { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MtError::PurgeUnconfirmed | MtError::InvalidPlanLimits { .. } | MtError::InvalidQuotaKey { .. } => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            MtError::PurgeReferenced { .. } => ERRCODE_FOREIGN_KEY_VIOLATION,
            MtError::PlanNotFound { .. } | MtError::MemberNotFound { .. } | MtError::SigningKeyNotFound { .. } => {
                ERRCODE_UNDEFINED_OBJECT
            }
            MtError::QuotaKeyNoTable { .. } => ERRCODE_UNDEFINED_TABLE,
            MtError::SigningKeyExists { .. } => ERRCODE_DUPLICATE_OBJECT,
            MtError::ArchiveUnsupported { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            MtError::ArchiveMismatch { missing_table: true, .. } => ERRCODE_UNDEFINED_TABLE,
            MtError::ArchiveMismatch { .. } => ERRCODE_DATATYPE_MISMATCH,
            MtError::MoveState { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            MtError::ExportReadOnly { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            MtError::Internal { .. } => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            MtError::NoContext => "no tenant context: multitenancy.tenant_id is not set in this transaction".into(),
            MtError::NoClusterContext => {
                "no tenant context on this Citus worker: the coordinator sent none for this transaction".into()
            }
            MtError::StaleSessionContext { setting } => format!(
                "no tenant context: {} was set for the session in an earlier transaction, and a tenant context \
                 lasts one transaction",
                clip(setting)
            ),
            MtError::OneTenantPerTransaction { current, requested } => format!(
                "this transaction already acts for tenant \"{}\"; it cannot switch to \"{}\"",
                clip(current),
                clip(requested)
            ),
            MtError::MalformedContext { value } => {
                format!("invalid tenant context: multitenancy.tenant_id = \"{}\" is not a uuid", clip(value))
            }
            MtError::NotInTransactionBlock { function } => {
                format!("{function}() can only be used in a transaction block")
            }
            MtError::BadToken { reason } => format!("invalid tenant token: {reason}"),
            MtError::TooManyTokens => "too many unexpired tenant tokens have been used on this server".into(),
            MtError::NoSigningKey => "no active signing key: add one with multitenancy.signing_key_add()".into(),
            MtError::SignedNeedsPreload => {
                "signed tenant contexts need multitenancy in shared_preload_libraries".into()
            }
            MtError::NoSignedContext { preloaded: true } => "no signed tenant context: this role requires \
                multitenancy.tenant_set_signed() in each transaction"
                .into(),
            MtError::NoSignedContext { preloaded: false } => "no signed tenant context: multitenancy.require_signed \
                is configured, and signed contexts need multitenancy in shared_preload_libraries"
                .into(),
            MtError::NoClaimsContext { setting, present: false, .. } => {
                format!("no tenant context: {setting} is not set in this transaction")
            }
            MtError::NoClaimsContext { setting, claim, present: true } => {
                format!("no tenant context: claim \"{claim}\" is missing from {setting}")
            }
            MtError::InvalidClaims { setting, reason } => format!("invalid tenant context: {setting} {reason}"),
            MtError::ContextFixed { by } => format!("multitenancy.tenant_set() cannot choose the tenant: {by}"),
            MtError::PlanForAnotherTenant { planned, current } => format!(
                "this statement was planned for tenant {planned} and cannot run for tenant {current}"
            ),
            MtError::TenantNotFound { tenant } => format!("tenant \"{}\" does not exist", clip(tenant)),
            MtError::TenantNotActive { slug, status } => {
                format!("tenant \"{slug}\" is {status}")
            }
            MtError::InvalidSlug { slug, reason } => format!("invalid tenant slug \"{}\": {reason}", clip(slug)),
            MtError::SlugUnderivable { name } => {
                format!("cannot derive a slug from tenant name \"{}\"", clip(name))
            }
            MtError::DuplicateSlug { slug } => format!("tenant slug \"{}\" is already taken", clip(slug)),
            MtError::InvalidName { reason } => format!("invalid tenant name: {reason}"),
            MtError::InvalidPlan { plan } => format!("invalid plan name \"{}\"", clip(plan)),
            MtError::WrongRelationKind { table, kind } => {
                format!("\"{table}\" is {kind}; only tables can be tenant-enabled")
            }
            MtError::ReservedSchema { table, schema } => {
                format!("cannot tenant-enable \"{table}\": schema \"{schema}\" is reserved")
            }
            MtError::TenantColumnType { table, found } => {
                format!("column \"tenant_id\" of table \"{table}\" has type {found}, not uuid")
            }
            MtError::BackfillRequired { table, rows, column_exists } => {
                if *column_exists {
                    format!("table \"{table}\" has {rows} row(s) whose tenant_id is NULL")
                } else {
                    format!("table \"{table}\" already has {rows} row(s) and no tenant to assign them to")
                }
            }
            MtError::GuardWeakens { command, table, what, .. } => {
                format!("refused: {command} would leave tenant-enabled table \"{table}\" unprotected: {what}")
            }
            #[cfg(not(feature = "pg14"))]
            MtError::LeakyView { view, table } => {
                format!("refused: view \"{view}\" reads tenant-enabled table \"{table}\" but is not security_invoker")
            }
            #[cfg(feature = "pg14")]
            MtError::LeakyView { view, table } => format!(
                "refused: view \"{view}\" reads tenant-enabled table \"{table}\" as its owner, a superuser or BYPASSRLS \
                 role"
            ),
            MtError::MaterializedView { view, table } => format!(
                "refused: materialized view \"{view}\" would store rows of tenant-enabled table \"{table}\" \
                 outside row level security"
            ),
            MtError::MaterializedViewFunction { view, function } => format!(
                "refused: materialized view \"{view}\" calls function {function}, which may read tenant-enabled tables: \
                 their rows would be stored outside row level security"
            ),
            MtError::PublishesTenantTable { publication, table } => {
                format!("refused: publication \"{publication}\" would publish tenant-enabled table \"{table}\"")
            }
            MtError::UnprotectedAtCommit { tables } => format!(
                "refused: COMMIT would leave new table(s) in guarded schemas unprotected: {}",
                tables.join(", ")
            ),
            MtError::TableExempt { table, reason } => {
                format!("table \"{table}\" is exempt from tenant isolation ({reason})")
            }
            MtError::TableEnabled { table } => format!("table \"{table}\" is tenant-enabled and cannot be exempt"),
            MtError::MissingReason => "an exemption needs a reason".into(),
            MtError::NotTableOwner { table, function } => {
                format!("{function}: must be the owner of table \"{table}\"")
            }
            MtError::CannotHarden { table, object, reason } => {
                format!("cannot add tenant_id to {object} of table \"{table}\": {reason}")
            }
            MtError::CitusRemoteSql { function } => format!(
                "{} is refused for roles bound by row level security: it runs SQL text on the Citus workers, where a \
                 role could name any tenant",
                clip(function)
            ),
            MtError::CitusForwardedSet => "refused: with citus.propagate_set_commands = local, Citus would send the \
                 text of this statement to the workers, where it runs as top-level statements; roles bound by row level \
                 security may not have SET statements forwarded"
                .into(),
            MtError::CannotDistribute { table, reason, .. } => {
                format!("cannot distribute table \"{table}\" by tenant: {reason}")
            }
            MtError::NoUserContext => "no user context: multitenancy.user_id is not set in this transaction".into(),
            MtError::MalformedUserContext { value } => {
                format!("invalid user context: multitenancy.user_id = \"{}\" is not a uuid", clip(value))
            }
            MtError::ContextTenantUnknown { id } => {
                format!("invalid tenant context: tenant {id} does not exist")
            }
            MtError::NotAMember { tenant, user } => {
                format!("user {user} is not a member of tenant \"{tenant}\"")
            }
            MtError::NotAuthorized { action, tenant, reason } => {
                format!("permission denied to {action} tenant \"{tenant}\": {reason}")
            }
            MtError::NotAdmin { role } => {
                format!("permission denied for admin access: role \"{role}\" is not a member of multitenancy_admin")
            }
            MtError::InvalidArgument { message, .. } => message.clone(),
            MtError::InvalidRole { role } => format!("invalid member role \"{}\"", clip(role)),
            MtError::HostNotFound { host } => format!("no tenant for host \"{}\"", clip(host)),
            MtError::QuotaExceeded { tenant, key, used, adding, quota, .. } => format!(
                "quota \"{}\" of tenant \"{}\" exceeded: {used} used, {adding} more requested, limit {quota}",
                clip(key),
                clip(tenant)
            ),
            MtError::OperatorsOnly { action, why } => format!("permission denied to {action}: {why}"),
            MtError::NoSuchRelation { oid } => format!("relation with OID {oid} does not exist"),
            MtError::NullArgument { argument } => format!("argument \"{argument}\" must not be NULL"),
            MtError::TriggerMisused { function, table, reason } => {
                format!("multitenancy.{function}() refused on \"{table}\": {reason}")
            }
            MtError::AdminReadOnly { table } => {
                format!("cannot write to tenant-enabled table \"{table}\" in read-only admin mode")
            }
            MtError::SignedSessionState { what, .. } => format!(
                "refused: {what} would outlive this transaction in a session that requires signed tenant contexts"
            ),
            MtError::GuardCannotCheck { what, .. } => {
                format!("refused: {what} fires no event trigger, so the DDL guard cannot check it")
            }
            MtError::DropWouldOpen { command, tables } => format!(
                "refused: {command} would leave tenant-enabled tables readable by every role with SELECT: {}",
                tables.join(", ")
            ),
            MtError::DomainTaken { domain } => format!("domain \"{}\" is already registered to another tenant", clip(domain)),
            MtError::WrongVerificationToken { domain } => {
                format!("verification token does not match for domain \"{}\"", clip(domain))
            }
            MtError::AuditLogAppendOnly => "multitenancy.audit_log is append-only".into(),
            MtError::StatusUnchanged { slug, status } => format!("tenant \"{}\" is already {status}", clip(slug)),
            MtError::CannotSuspend { slug, status } => {
                format!("tenant \"{}\" is {status}; only an active tenant can be suspended", clip(slug))
            }
            MtError::CannotPurge { slug, status } => {
                format!("tenant \"{}\" is {status}; only a deleted tenant can be purged", clip(slug))
            }
            MtError::PurgeUnconfirmed => {
                "tenant_purge needs confirmation: confirm_slug must be the tenant's slug".into()
            }
            MtError::PurgeReferenced { slug, tables } => {
                format!("cannot purge tenant \"{}\": rows of {} are still referenced", clip(slug), clip(tables))
            }
            MtError::PlanNotFound { plan } => format!("plan \"{}\" does not exist", clip(plan)),
            MtError::InvalidPlanLimits { reason } => (*reason).into(),
            MtError::OwnersOnly { action, slug } => {
                format!("permission denied to {action} tenant \"{}\": only owners may", clip(slug))
            }
            MtError::AlreadyMember { user, slug } => {
                format!("user {} is already a member of tenant \"{}\"", clip(user), clip(slug))
            }
            MtError::LastOwner { verb, slug } => format!("cannot {} the last owner of tenant \"{}\"", clip(verb), clip(slug)),
            MtError::MemberNotFound { user, slug } => {
                format!("user {} is not a member of tenant \"{}\"", clip(user), clip(slug))
            }
            MtError::QuotaKeyNoTable { key } => format!("quota key \"{}\" names no tenant-enabled table", clip(key)),
            MtError::InvalidQuotaKey { key } => format!("invalid quota key \"{}\"", clip(key)),
            MtError::SigningKeyExists { name } => format!("signing key \"{}\" already exists", clip(name)),
            MtError::SigningKeyNotFound { name } => format!("signing key \"{}\" does not exist", clip(name)),
            MtError::ArchiveUnsupported { reason, .. } => format!("cannot import this archive: {reason}"),
            MtError::ArchiveMismatch { problems, .. } => {
                format!("the archive does not fit this database's tables: {} problem(s)", problems.len())
            }
            MtError::MoveState { reason, .. } => reason.clone(),
            MtError::ExportReadOnly { table } => {
                format!("cannot write table \"{table}\": this transaction exports a tenant (tenant_export), which only reads")
            }
            MtError::Internal { context, error } => format!("multitenancy internal error in {context}: {error}"),
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            MtError::NoClusterContext => Some(
                "A worker takes the tenant from the coordinator (multitenancy.cluster_tenant, which the extension \
                 sets on the coordinator and Citus sends with the transaction's SET LOCAL commands); a query without \
                 it fails instead of returning rows."
                    .into(),
            ),
            MtError::NoContext => Some(
                "Row-level security on tenant-enabled tables needs a tenant; without one, queries fail \
                 instead of returning rows. The context lasts one transaction."
                    .into(),
            ),
            MtError::NotInTransactionBlock { .. } => Some(
                "The tenant context is transaction-local; outside BEGIN ... COMMIT it would end with \
                 this statement and have no effect."
                    .into(),
            ),
            MtError::TenantNotActive { .. } => Some(
                "Only active tenants can be the tenant context; a context set earlier stops working at the \
                 next transaction."
                    .into(),
            ),
            MtError::NotAMember { .. } => Some(
                "When multitenancy.user_id is set, the tenant context is valid only for tenants the user is a \
                 member of."
                    .into(),
            ),
            MtError::InvalidSlug { .. } => {
                Some("A slug is 1 to 63 characters of a-z, 0-9 and '-', and neither starts nor ends with '-'.".into())
            }
            MtError::BackfillRequired { .. } => {
                Some("Every row of a tenant-enabled table must belong to a tenant.".into())
            }
            MtError::LeakyView { .. } => Some(
                "A view that is not security_invoker reads its tables with its owner's rights; a \
                 superuser or BYPASSRLS owner would show every tenant's rows."
                    .into(),
            ),
            MtError::MaterializedView { .. } | MtError::MaterializedViewFunction { .. } => Some(
                "A materialized view is a copy of the rows; row level security of the source table does \
                 not apply to it."
                    .into(),
            ),
            MtError::PublishesTenantTable { .. } => {
                Some("Logical decoding ignores row level security: a subscriber receives every tenant's rows.".into())
            }
            MtError::PurgeUnconfirmed => {
                Some("Purging deletes every row of the tenant in every tenant-enabled table, for good.".into())
            }
            MtError::LastOwner { .. } => Some("A tenant always keeps at least one owner.".into()),
            MtError::ArchiveMismatch { problems, .. } => Some(problems.join("\n")),
            MtError::UnprotectedAtCommit { .. } => Some(
                "multitenancy.guarded_schemas lists schemas in which every table holds tenant data unless \
                 declared global."
                    .into(),
            ),
            _ => None,
        }
    }

    /// Every error says what to do about it.
    pub fn hint(&self) -> String {
        match self {
            MtError::NoContext => HINT_SET_CONTEXT.into(),
            MtError::NoClusterContext => "Run tenant queries on the coordinator, inside BEGIN ... COMMIT with a tenant context \
                 (Citus sends SET LOCAL commands to the workers of a transaction block only); connect applications to \
                 the coordinator, not to workers."
                .into(),
            MtError::StaleSessionContext { .. } => format!(
                "{HINT_SET_CONTEXT} A DBA can let a role keep a session-level context (psql, reports, workers): \
                 ALTER ROLE <role> SET multitenancy.session_context = on."
            ),
            MtError::OneTenantPerTransaction { .. } => "A transaction acts for one tenant, so that work begun for one \
                 tenant (an abandoned transaction on a pooled connection, say) can never commit for another. \
                 COMMIT or ROLLBACK, then set the other tenant in a new transaction."
                .into(),
            MtError::MalformedContext { .. } => format!(
                "multitenancy.tenant_id takes a tenant uuid; to select a tenant by slug use \
                 multitenancy.tenant_set(). {HINT_SET_CONTEXT}"
            ),
            MtError::NotInTransactionBlock { function } => format!(
                "Call {function}() after BEGIN, in the transaction that runs the tenant's queries \
                 (a multi-statement query string is one implicit transaction, too)."
            ),
            MtError::TenantNotFound { .. } => "Pass the slug or id of an existing tenant; DBAs list them with \
                 SELECT id, slug, status FROM multitenancy.tenants."
                .into(),
            MtError::TenantNotActive { .. } => {
                "A DBA can reactivate the tenant; until then it has no context.".into()
            }
            MtError::InvalidSlug { .. } => {
                "Pass a slug such as 'acme-corp', or NULL to derive one from the name.".into()
            }
            MtError::SlugUnderivable { .. } => {
                "The name has no letters or digits that map to a-z or 0-9; pass slug => 'your-slug'.".into()
            }
            MtError::DuplicateSlug { .. } => {
                "Choose another slug: SELECT multitenancy.tenant_create('<name>', slug => '<other-slug>')."
                    .into()
            }
            MtError::InvalidName { .. } => "Pass a name of 1 to 200 characters.".into(),
            MtError::InvalidPlan { .. } => "A plan name is 1 to 63 characters of a-z, 0-9, '_' and '-'.".into(),
            MtError::WrongRelationKind { .. } => "Enable the tables the view or foreign table reads from; RLS on \
                 them also protects security_invoker views."
                .into(),
            MtError::ReservedSchema { .. } => "Only tables in application schemas can be tenant-enabled.".into(),
            MtError::TenantColumnType { table, .. } => format!(
                "Convert the column (ALTER TABLE {table} ALTER COLUMN tenant_id TYPE uuid USING ...) \
                 or rename it, then call multitenancy.tenant_enable again."
            ),
            MtError::BackfillRequired { table, .. } => format!(
                "Pass the tenant that owns the existing rows: SELECT multitenancy.tenant_enable('{table}', \
                 backfill_tenant => '<tenant uuid>'). Rows of several tenants must get their tenant_id \
                 set first (UPDATE ... SET tenant_id = ...)."
            ),
            MtError::GuardWeakens { fix: Some(fix), .. } => fix.clone(),
            MtError::GuardWeakens { table, .. } => format!(
                "The protection of tenant-enabled tables cannot be weakened. To remove it on purpose, call \
                 SELECT multitenancy.tenant_disable('{table}'); for maintenance a superuser can SET \
                 multitenancy.ddl_guard = off."
            ),
            #[cfg(not(feature = "pg14"))]
            MtError::LeakyView { view, .. } => format!(
                "Create it WITH (security_invoker = true), so that row level security applies to the \
                 querying role: CREATE OR REPLACE VIEW {view} WITH (security_invoker = true) AS ..."
            ),
            #[cfg(feature = "pg14")]
            MtError::LeakyView { view, .. } => format!(
                "PostgreSQL 14 has no security_invoker views: a view reads as its owner, which row level \
                 security (forced on enabled tables) filters unless it is a superuser or has BYPASSRLS. Let \
                 the table owner own it: ALTER VIEW {view} OWNER TO <the table's owner>."
            ),
            MtError::MaterializedView { .. } => "Use a view WITH (security_invoker = true), or a tenant-enabled \
                 table filled by the application."
                .into(),
            MtError::MaterializedViewFunction { .. } => "A materialized view may call built-in and C functions only, \
                 since what a SQL or procedural function reads cannot be checked. Use a view WITH (security_invoker = \
                 true); if the function reads only global tables, a superuser can create it with SET \
                 multitenancy.ddl_guard = off."
                .into(),
            MtError::PublishesTenantTable { .. } => "Publish only global tables; if replicating every tenant is \
                 intended, a superuser can SET multitenancy.ddl_guard = off for this command."
                .into(),
            MtError::UnprotectedAtCommit { tables } => {
                let first = tables.first().map(String::as_str).unwrap_or("<table>");
                format!(
                    "Before COMMIT, call SELECT multitenancy.tenant_enable('{first}') for tenant data, or \
                     SELECT multitenancy.tenant_exempt('{first}', '<why it is global>') for global data."
                )
            }
            MtError::TableExempt { table, .. } => {
                format!("Remove the exemption first: SELECT multitenancy.tenant_unexempt('{table}').")
            }
            MtError::TableEnabled { table } => format!(
                "A table holds tenant data or global data, not both; to make it global call \
                 SELECT multitenancy.tenant_disable('{table}') first."
            ),
            MtError::MissingReason => "Say why the table is global, e.g. 'country codes shared by all tenants'.".into(),
            MtError::NotTableOwner { .. } => "Run it as the table's owner (the role that runs migrations) or a \
                 superuser."
                .into(),
            MtError::CannotDistribute { hint, .. } => hint.clone(),
            MtError::CitusForwardedSet => "SET LOCAL citus.propagate_set_commands = none (the default) first. The \
                 extension sends the tenant to the workers itself (use multitenancy.tenant_set() for the context); give \
                 the workers other settings as role defaults (ALTER ROLE ... SET, which Citus propagates)."
                .into(),
            MtError::CitusRemoteSql { .. } => "Run it as a superuser or a BYPASSRLS role (row level security does not \
                 bind them anyway); applications query the distributed tables through the coordinator."
                .into(),
            MtError::CannotHarden { .. } => "Change the constraint so that tenant_id can join it, or drop it, and \
                 call multitenancy.tenant_enable again."
                .into(),
            MtError::NoUserContext => "Inside the transaction, SET LOCAL multitenancy.user_id = '<user uuid>'.".into(),
            MtError::MalformedUserContext { .. } => {
                "multitenancy.user_id takes a user uuid: SET LOCAL multitenancy.user_id = '<user uuid>'.".into()
            }
            MtError::ContextTenantUnknown { .. } => format!(
                "The tenant may have been purged, or the uuid is wrong. {HINT_SET_CONTEXT}"
            ),
            MtError::NotAMember { tenant, .. } => format!(
                "Choose one of the user's tenants (SELECT * FROM multitenancy.user_tenants()), or have an admin \
                 of \"{tenant}\" add the user with multitenancy.member_add()."
            ),
            MtError::NotAuthorized { .. } => "Act as an admin of the tenant (its context plus multitenancy.user_id of a \
                 member with a high enough role), or as an operator: a superuser, the extension's owner, or a \
                 multitenancy_admin member after SELECT multitenancy.admin_begin('<reason>', write => true)."
                .into(),
            MtError::NotAdmin { .. } => {
                "A DBA grants admin access with GRANT multitenancy_admin TO <role>.".into()
            }
            MtError::InvalidArgument { hint, .. } => hint.clone(),
            MtError::InvalidRole { .. } => "A role is one of 'owner', 'admin', 'member', 'guest'.".into(),
            MtError::HostNotFound { .. } => "Register the host with multitenancy.domain_add() and verify it, or \
                 use <slug>.<multitenancy.base_domain>."
                .into(),
            MtError::QuotaExceeded { tenant, key, metered: true, .. } => format!(
                "Metered usage is counted per calendar month (UTC) and starts again at 0 next month. A DBA can raise \
                 the limit: multitenancy.quota_set('{tenant}', '{key}', <limit>), or the plan's limits."
            ),
            MtError::QuotaExceeded { tenant, key, .. } => format!(
                "Free capacity first (delete rows or members), or have a DBA raise the limit: \
                 multitenancy.quota_set('{tenant}', '{key}', <limit>), or the plan's limits."
            ),
            MtError::BadToken { .. } => "Mint a new token for each transaction (multitenancy.tenant_token(), or any JWT \
                 library with HS256, a \"kid\" header and tenant_id, iat, exp and jti claims), and pass it to \
                 SELECT multitenancy.tenant_set_signed('<token>') after BEGIN."
                .into(),
            MtError::TooManyTokens => "Tokens are remembered until they expire: mint them with a shorter ttl \
                 (multitenancy.tenant_token(tenant, ttl => '30 seconds'))."
                .into(),
            MtError::NoSigningKey => "A superuser adds one: SELECT multitenancy.signing_key_add('key-2026', \
                 gen_random_bytes(32))."
                .into(),
            MtError::SignedNeedsPreload | MtError::NoSignedContext { preloaded: false } => "Add multitenancy to \
                 shared_preload_libraries in postgresql.conf (ALTER SYSTEM SET shared_preload_libraries = \
                 'multitenancy') and restart the server: a token's single use is checked in shared memory."
                .into(),
            MtError::NoSignedContext { preloaded: true } => "Inside the transaction, call SELECT \
                 multitenancy.tenant_set_signed('<token>') with a token from multitenancy.tenant_token(); \
                 multitenancy.tenant_id and multitenancy.tenant_set() are not accepted for this role."
                .into(),
            MtError::NoClaimsContext { setting, claim, .. } => format!(
                "The tenant comes from claim \"{claim}\" of {setting} (multitenancy.claims_setting and \
                 multitenancy.claims_tenant): issue tokens with that claim, or SET LOCAL {setting} = \
                 '{{\"{claim}\": \"<tenant uuid or slug>\"}}'."
            ),
            MtError::InvalidClaims { setting, .. } => format!(
                "{setting} must hold a JSON object such as {{\"tenant_id\": \"<tenant uuid or slug>\", \"sub\": \"<user uuid>\"}}."
            ),
            MtError::PlanForAnotherTenant { .. } => "The tenant context changed in a way multitenancy did not see \
                 while the plan was kept; the plan has been discarded. Run the statement again: it is planned \
                 for the current tenant."
                .into(),
            MtError::ContextFixed { .. } => "Set the context the way this role is configured to: a signed token \
                 (multitenancy.tenant_set_signed) or the framework's claims (multitenancy.claims_setting)."
                .into(),
            MtError::NullArgument { argument, .. } => format!("Pass a value for {argument}."),
            MtError::NoSuchRelation { .. } => "Name the table (schema-qualified if needed), e.g. 'public.orders'.".into(),
            MtError::OperatorsOnly { .. } => "Operators are superusers, members of the extension's owning role, and \
                 multitenancy_admin members after SELECT multitenancy.admin_begin('<reason>', write => true)."
                .into(),
            MtError::TriggerMisused { .. } => "The extension's trigger functions run only on tenant-enabled tables, \
                 where multitenancy.tenant_enable() installs them."
                .into(),
            MtError::AdminReadOnly { .. } => "Read-only admin access (admin_begin(reason)) cannot write, whatever \
                 transaction_read_only says. Writes need SELECT multitenancy.admin_begin('<reason>', write => true) \
                 in a new transaction."
                .into(),
            MtError::SignedSessionState { hint, .. } | MtError::GuardCannotCheck { hint, .. } => hint.clone(),
            MtError::DropWouldOpen { .. } => "These tables have permissive policies of their own, which would remain \
                 without the extension's isolation policy. Take the tables out of the extension's care first \
                 (SELECT multitenancy.tenant_disable('<table>')), or drop those policies; the extension's own \
                 policies go with it and leave the tables closed."
                .into(),
            MtError::DomainTaken { .. } => "A domain routes to one tenant; the other tenant must remove it first \
                 (multitenancy.domain_remove), or, while it is unverified, wait until its claim expires \
                 (multitenancy.domain_claim_ttl)."
                .into(),
            MtError::WrongVerificationToken { .. } => {
                "Pass the token multitenancy.domain_add() returned for this domain.".into()
            }
            MtError::AuditLogAppendOnly => "Audit rows cannot be changed or removed; a superuser can archive them.".into(),
            MtError::StatusUnchanged { slug, .. } => format!(
                "Check the status first: SELECT status FROM multitenancy.tenants WHERE slug = '{}'.",
                clip(slug)
            ),
            MtError::CannotSuspend { status, .. } => {
                format!("Activate it first with multitenancy.tenant_activate(), or leave it {status}.")
            }
            MtError::CannotPurge { slug, .. } => {
                format!("Delete it first: SELECT multitenancy.tenant_delete('{}').", clip(slug))
            }
            MtError::PurgeUnconfirmed => {
                "Call SELECT multitenancy.tenant_purge('<tenant>', confirm_slug => '<its slug>').".into()
            }
            MtError::PurgeReferenced { .. } => "A table that is not tenant-enabled references the tenant's rows; \
                 delete those rows first."
                .into(),
            MtError::PlanNotFound { plan } => format!(
                "Create it first: SELECT multitenancy.plan_set('{}', limits => '{{}}', features => '{{}}').",
                clip(plan)
            ),
            MtError::InvalidPlanLimits { .. } => "For example limits => '{\"rows\": 100000, \"bytes\": 1073741824, \
                 \"members\": 5, \"api_calls\": null}', features => '{\"sso\": false}'."
                .into(),
            MtError::OwnersOnly { .. } => "Ask an owner of the tenant; an admin may add members as admin.".into(),
            MtError::AlreadyMember { .. } => "Change the role with multitenancy.member_set_role().".into(),
            MtError::LastOwner { .. } => "Make another member owner first: SELECT \
                 multitenancy.member_set_role('<tenant>', '<user>', 'owner')."
                .into(),
            MtError::MemberNotFound { .. } => "List the members with multitenancy.member_list('<tenant>'); add one \
                 with multitenancy.member_add()."
                .into(),
            MtError::QuotaKeyNoTable { .. } => "Write rows:<schema>.<table> for a table enabled with \
                 multitenancy.tenant_enable(), e.g. rows:public.orders."
                .into(),
            MtError::InvalidQuotaKey { .. } => "A key is members, rows, bytes, rows:<schema>.<table>, or a metered \
                 counter name: lower-case letters, digits, _ . -, starting with a letter, at most 63 characters \
                 (e.g. api_calls)."
                .into(),
            MtError::SigningKeyExists { .. } => "Key names are never reused, so that a token names exactly one \
                 secret. Choose another name."
                .into(),
            MtError::SigningKeyNotFound { .. } => {
                "List the keys with SELECT * FROM multitenancy.signing_key_list().".into()
            }
            MtError::ArchiveUnsupported { hint, .. } | MtError::MoveState { hint, .. } => hint.clone(),
            MtError::ExportReadOnly { .. } => "Write in another transaction; an export reads one tenant's rows in any status, \
                as they are."
                .into(),
            MtError::ArchiveMismatch { .. } => "Bring the tables to the same shape first (run the migrations of the \
                archive's source on the target, or the other way round), then import again. \
                SELECT * FROM multitenancy.import_check(<manifest>) lists the problems."
                .into(),
            MtError::Internal { .. } => "This is a bug in the multitenancy extension; please report it.".into(),
        }
    }

    /// Raise this error as a PostgreSQL ERROR. Never returns.
    #[track_caller]
    pub fn raise(self) -> ! {
        // Inputs are cut where messages quote them (see `clip`); this caps whatever else a
        // message may carry, so that no error copies a huge argument into the server log.
        let mut report = ErrorReport::new(self.sqlstate(), cap(self.message(), 1000), "multitenancy");
        if let Some(detail) = self.detail() {
            report = report.set_detail(cap(detail, 1000));
        }
        report.set_hint(cap(self.hint(), 1000)).report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }

    pub fn internal(context: &'static str, error: impl std::fmt::Display) -> Self {
        MtError::Internal { context, error: error.to_string() }
    }
}

/// A required argument: NULL is an error that names it (22004).
pub fn required<T>(value: Option<T>, argument: &'static str) -> Result<T> {
    value.ok_or(MtError::NullArgument { argument })
}

/// An input as error messages quote it: at most 100 characters, the rest counted.
pub fn clip(input: &str) -> String {
    const KEEP: usize = 100;
    match input.char_indices().nth(KEEP) {
        None => input.to_string(),
        Some((end, _)) => format!("{}... ({} bytes in all)", &input[..end], input.len()),
    }
}

fn cap(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `multitenancy._raise(kind, args)`: the one way the extension's SQL functions raise an error,
/// so that every SQLSTATE, message and hint comes from [`MtError`]. `kind` names the error and
/// `args` fill it in (see the match below); an unknown kind is an internal error.
#[pg_extern(volatile, parallel_safe)]
fn _raise(kind: Option<&str>, args: Option<Vec<Option<String>>>) {
    let args = args.unwrap_or_default();
    // NULL is shown as plpgsql's RAISE showed it.
    let arg = |i: usize| args.get(i).cloned().flatten().unwrap_or_else(|| "NULL".into());
    let error = match required(kind, "kind").or_raise() {
        "domain_taken" => MtError::DomainTaken { domain: arg(0) },
        "host_not_found" => MtError::HostNotFound { host: arg(0) },
        "wrong_verification_token" => MtError::WrongVerificationToken { domain: arg(0) },
        "audit_log_append_only" => MtError::AuditLogAppendOnly,
        "status_unchanged" => MtError::StatusUnchanged { slug: arg(0), status: arg(1) },
        "cannot_suspend" => MtError::CannotSuspend { slug: arg(0), status: arg(1) },
        "cannot_purge" => MtError::CannotPurge { slug: arg(0), status: arg(1) },
        "purge_unconfirmed" => MtError::PurgeUnconfirmed,
        "purge_referenced" => MtError::PurgeReferenced { slug: arg(0), tables: arg(1) },
        "slug_taken" => MtError::DuplicateSlug { slug: arg(0) },
        "plan_not_found" => MtError::PlanNotFound { plan: arg(0) },
        "plan_not_objects" => MtError::InvalidPlanLimits { reason: "plan limits and features must be JSON objects" },
        "plan_limits_not_whole" => {
            MtError::InvalidPlanLimits { reason: "plan limits must be whole numbers >= 0 (or null for unlimited)" }
        }
        "null_argument" if arg(0) == "key" => MtError::NullArgument { argument: "key" },
        "owners_only_add" => MtError::OwnersOnly { action: "add an owner to", slug: arg(0) },
        "owners_only_remove" => MtError::OwnersOnly { action: "remove an owner of", slug: arg(0) },
        "owners_only_change" => MtError::OwnersOnly { action: "change the owners of", slug: arg(0) },
        "already_member" => MtError::AlreadyMember { user: arg(0), slug: arg(1) },
        "last_owner" => MtError::LastOwner { verb: arg(0), slug: arg(1) },
        "member_not_found" => MtError::MemberNotFound { user: arg(0), slug: arg(1) },
        "quota_key_no_table" => MtError::QuotaKeyNoTable { key: arg(0) },
        "invalid_quota_key" => MtError::InvalidQuotaKey { key: arg(0) },
        "signing_key_exists" => MtError::SigningKeyExists { name: arg(0) },
        "signing_key_not_found" => MtError::SigningKeyNotFound { name: arg(0) },
        "tenant_not_found" => MtError::TenantNotFound { tenant: arg(0) },
        "archive_invalid" => MtError::InvalidArgument { message: format!("invalid archive: {}", arg(0)), hint: arg(1) },
        other => MtError::InvalidArgument {
            message: format!("unknown error kind \"{}\"", clip(other)),
            hint: "multitenancy._raise is the extension's own way to raise its errors; see src/error.rs.".into(),
        },
    };
    error.raise()
}

/// `result.or_raise()` turns an `MtError` into a PostgreSQL ERROR at the SQL boundary.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(error) => error.raise(),
        }
    }
}

/// SPI failures (as opposed to SQL errors, which PostgreSQL raises itself) are extension bugs.
pub trait SpiContext<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> SpiContext<T> for std::result::Result<T, pgrx::spi::SpiError> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|e| MtError::internal(context, e))
    }
}

/// For a query that may return no row: no row is `Ok(None)`, not an error.
pub trait NoRowIsNone<T> {
    fn no_row_is_none(self) -> std::result::Result<Option<T>, pgrx::spi::SpiError>;
}

impl<T> NoRowIsNone<T> for std::result::Result<Option<T>, pgrx::spi::SpiError> {
    fn no_row_is_none(self) -> std::result::Result<Option<T>, pgrx::spi::SpiError> {
        match self {
            Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
            other => other,
        }
    }
}

/// Emit a WARNING.
pub fn warning(message: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, message.into(), "multitenancy").report(PgLogLevel::WARNING);
}

/// Write a line to the server log (not sent to the client at default settings).
pub fn log(message: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message.into(), "multitenancy")
        .report(PgLogLevel::LOG);
}

/// Emit a NOTICE.
pub fn notice(message: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message.into(), "multitenancy")
        .report(PgLogLevel::NOTICE);
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test(error = "no tenant context: multitenancy.tenant_id is not set in this transaction")]
    fn raise_reports_the_message() {
        MtError::NoContext.raise();
    }

    #[pg_test]
    fn context_failures_share_one_sqlstate_apps_can_catch() {
        for error in [
            MtError::NoContext,
            MtError::MalformedContext { value: "x".into() },
            MtError::TenantNotActive { slug: "x".into(), status: "suspended".into() },
        ] {
            assert_eq!(error.sqlstate(), PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "{error:?}");
        }
    }

    #[pg_test]
    fn an_spi_failure_is_an_internal_error_that_says_so() {
        let error = Spi::get_one::<i64>("SELECT 'not a number'::text").ctx("test").unwrap_err();
        assert_eq!(error.sqlstate(), PgSqlErrorCode::ERRCODE_INTERNAL_ERROR);
        assert!(error.message().starts_with("multitenancy internal error in test"));
        assert!(error.hint().contains("bug"));
    }
}
