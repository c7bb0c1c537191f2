//! The one description of a tenant-protected table.
//!
//! `tenant_enable` builds this shape, `tenant_disable` removes it, and everything that checks a
//! table (the DDL guard, `verify()`) compares the catalog against it through [`inspect`]. The
//! policy SQL exists only here.
use crate::catalog::Relation;
use crate::error::{Result, SpiContext};
use crate::registry;
use pgrx::prelude::*;

/// The tenant column every protected table has.
pub const TENANT_COLUMN: &str = "tenant_id";

/// How policies read the context: a scalar sub-select, which the planner turns into an
/// initPlan — evaluated once per query and usable as an index condition — instead of a
/// function call per row.
pub const CONTEXT_SQL: &str = "(SELECT multitenancy.current_tenant_id())";

/// The column default: new rows belong to the current tenant (and fail without one).
pub const DEFAULT_SQL: &str = "multitenancy.current_tenant_id()";

/// A policy the extension owns on every protected table.
#[derive(Debug, Clone, Copy)]
pub struct PolicySpec {
    pub name: &'static str,
    pub permissive: bool,
    /// `true`: the policy's USING and WITH CHECK are the tenant predicate; `false`:
    /// [`PERMIT_SQL`].
    pub tenant_predicate: bool,
    /// The predicate calls the context function directly instead of through a sub-select:
    /// the form Citus accepts on a distributed table ([`DISTRIBUTED_POLICIES`]).
    pub bare: bool,
}

/// Both policies apply to all commands and all roles, with USING and WITH CHECK.
///
/// PostgreSQL returns no rows through RLS unless some PERMISSIVE policy passes, and ANDs every
/// RESTRICTIVE policy onto the result. So isolation is the RESTRICTIVE policy: whatever
/// permissive policies a table has — ours, or one an application adds later such as
/// `USING (true)` — rows outside the tenant stay invisible and cannot be written. The permissive
/// policy only opens the default-deny; keeping the predicate out of it means the planner sees
/// the context once per query (one initPlan, one filter), not twice.
pub const POLICIES: [PolicySpec; 2] = [
    PolicySpec { name: "multitenancy_access", permissive: true, tenant_predicate: false, bare: false },
    PolicySpec { name: "multitenancy_isolation", permissive: false, tenant_predicate: true, bare: false },
];

/// The one policy of a table distributed by Citus (`tenant_distribute`). Citus copies a
/// table's policies onto its shards without their AS RESTRICTIVE (it deparses every policy as
/// permissive), and refuses sub-selects in policies. So a distributed table has exactly one
/// policy, the isolation predicate, permissive — with no other policy to OR with, permissive is
/// as strict as restrictive — and calling `current_tenant_id()` directly. The planner puts the
/// tenant in as a constant before Citus plans the query (`context::planning`), which is what
/// routes a tenant's query to its one shard; on the workers the function reads the context the
/// coordinator sent (`context::cluster`). Any other policy on a distributed table is a deviation
/// ([`Deviation::PolicyOnDistributed`]).
pub const DISTRIBUTED_POLICIES: [PolicySpec; 1] =
    [PolicySpec { name: "multitenancy_isolation_distributed", permissive: true, tenant_predicate: true, bare: true }];

/// The extension's policies of a table in its shape (distributed by Citus or not).
pub fn policies(distributed: bool) -> &'static [PolicySpec] {
    if distributed {
        &DISTRIBUTED_POLICIES
    } else {
        &POLICIES
    }
}

/// The counting triggers of a table in its shape: none on a distributed table (Citus runs a
/// shard's triggers on the worker, away from the coordinator's counters; tenants' usage does not
/// count distributed tables).
pub fn triggers(distributed: bool) -> &'static [TriggerSpec] {
    if distributed {
        &[]
    } else {
        &TRIGGERS
    }
}

/// The permissive policy's expression: true while the extension is installed. `USING (true)`
/// would outlive the extension: `DROP EXTENSION multitenancy CASCADE` drops what depends on its
/// functions (the isolation policy, the column default, the counting triggers) and would leave
/// a permissive `true` behind, every row readable by anyone with SELECT. Depending on the
/// extension's [`_installed`], this policy goes with the isolation policy, and the table stays
/// forced with no policy at all: closed to everyone but superusers and BYPASSRLS roles.
/// IMMUTABLE: the planner folds it to `true`, so queries plan as with a literal.
pub const PERMIT_SQL: &str = "multitenancy._installed()";

/// The permissive expression the installed SQL supports: [`PERMIT_SQL`], or `true` while the
/// database still has version 0.1.0's SQL (its library replaced, `ALTER EXTENSION multitenancy
/// UPDATE` not run yet; the update rewrites these policies). Decided by the installed version,
/// not by whether `_installed()` exists: on 0.2.0 a missing `_installed()` (a superuser's
/// catalog surgery) makes building the policy fail rather than fall back to `true`.
fn permit_sql() -> &'static str {
    let old =
        Spi::get_one::<bool>("SELECT extversion = '0.1.0' FROM pg_catalog.pg_extension WHERE extname = 'multitenancy'");
    if matches!(old, Ok(Some(true))) {
        "true"
    } else {
        PERMIT_SQL
    }
}

/// `true`, for [`PERMIT_SQL`]. EXECUTE stays granted to PUBLIC: every role's queries call it.
#[pg_extern(immutable, parallel_safe)]
fn _installed() -> bool {
    true
}

/// Audited cross-tenant access (`admin_begin`). An IMMUTABLE function the planner folds into a
/// constant: outside admin mode the predicate plans exactly as `tenant_id = <context>` (one
/// initPlan, an index condition); see `context/admin.rs` for how plans of the two modes are kept apart.
pub const ADMIN_SQL: &str = "multitenancy._admin_mode()";

/// A trigger the extension owns on every protected table: the usage counting of quotas.rs.
#[derive(Debug, Clone, Copy)]
pub struct TriggerSpec {
    pub name: &'static str,
    /// `FOR EACH ROW` (true) or `FOR EACH STATEMENT`.
    pub row: bool,
    /// The AFTER events, in the order PostgreSQL prints them.
    pub events: &'static str,
    pub function: &'static str,
}

/// The row trigger counts each written row's tenant and size; the statement trigger applies the
/// counts and enforces the limits once per statement (and forgets a truncated table's counts).
pub const TRIGGERS: [TriggerSpec; 2] = [
    TriggerSpec {
        name: "multitenancy_usage_row",
        row: true,
        events: "INSERT OR DELETE OR UPDATE",
        function: "multitenancy._usage_row",
    },
    TriggerSpec {
        name: "multitenancy_usage_statement",
        row: false,
        events: "INSERT OR DELETE OR UPDATE OR TRUNCATE",
        function: "multitenancy._usage_statement",
    },
];

impl TriggerSpec {
    /// `pg_trigger.tgtype` of this trigger: ROW 1, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32
    /// (AFTER is the absence of BEFORE 2 and INSTEAD 64).
    fn tgtype(&self) -> i16 {
        let mut t = if self.row { 1 } else { 0 };
        for event in self.events.split(" OR ") {
            t |= match event {
                "INSERT" => 4,
                "DELETE" => 8,
                "UPDATE" => 16,
                "TRUNCATE" => 32,
                _ => 0,
            };
        }
        t
    }

    pub fn create_sql(&self, table: &str) -> String {
        format!(
            "CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH {level} EXECUTE FUNCTION {function}()",
            name = self.name,
            events = self.events,
            level = if self.row { "ROW" } else { "STATEMENT" },
            function = self.function,
        )
    }

    pub fn drop_sql(&self, table: &str) -> String {
        format!("DROP TRIGGER IF EXISTS {} ON {table}", self.name)
    }
}

/// The predicate of the isolation policy.
pub fn predicate_sql() -> String {
    format!("{TENANT_COLUMN} = {CONTEXT_SQL} OR {ADMIN_SQL}")
}

/// The predicate of a distributed table's policy ([`DISTRIBUTED_POLICIES`]).
pub fn bare_predicate_sql() -> String {
    format!("{TENANT_COLUMN} = {DEFAULT_SQL} OR {ADMIN_SQL}")
}

/// How PostgreSQL prints [`predicate_sql`] back (pg_get_expr under `search_path = pg_catalog`).
const PREDICATE_DEPARSED: &str =
    "((tenant_id = ( SELECT multitenancy.current_tenant_id() AS current_tenant_id)) OR multitenancy._admin_mode())";
/// How PostgreSQL prints [`bare_predicate_sql`] back.
const BARE_PREDICATE_DEPARSED: &str = "((tenant_id = multitenancy.current_tenant_id()) OR multitenancy._admin_mode())";
/// How PostgreSQL prints [`DEFAULT_SQL`] back.
const DEFAULT_DEPARSED: &str = "multitenancy.current_tenant_id()";

impl PolicySpec {
    fn expression_sql(&self) -> String {
        if self.tenant_predicate && self.bare {
            bare_predicate_sql()
        } else if self.tenant_predicate {
            predicate_sql()
        } else {
            permit_sql().to_string()
        }
    }

    /// How PostgreSQL prints the expression back; `permit` is [`permit_sql`].
    fn expression_deparsed(&self, permit: &'static str) -> &'static str {
        if self.tenant_predicate && self.bare {
            BARE_PREDICATE_DEPARSED
        } else if self.tenant_predicate {
            PREDICATE_DEPARSED
        } else {
            permit
        }
    }

    pub fn create_sql(&self, table: &str) -> String {
        let expression = self.expression_sql();
        format!(
            "CREATE POLICY {name} ON {table} AS {kind} FOR ALL TO PUBLIC USING ({expression}) WITH CHECK ({expression})",
            name = self.name,
            kind = if self.permissive { "PERMISSIVE" } else { "RESTRICTIVE" },
        )
    }

    pub fn drop_sql(&self, table: &str) -> String {
        format!("DROP POLICY IF EXISTS {} ON {table}", self.name)
    }
}

/// One way a table differs from the protected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deviation {
    ColumnMissing,
    ColumnType {
        found: String,
    },
    ColumnNullable,
    ColumnDefault {
        found: Option<String>,
    },
    IndexMissing,
    RowSecurityDisabled,
    RowSecurityNotForced,
    PolicyMissing {
        policy: &'static str,
    },
    PolicyDiffers {
        policy: &'static str,
    },
    TriggerMissing {
        trigger: &'static str,
    },
    /// Disabled, or not the canonical definition.
    TriggerDiffers {
        trigger: &'static str,
    },
    /// A parent (inheritance or partitioned table) that is not tenant-enabled: a query on it
    /// returns this table's rows of every tenant.
    ParentNotEnabled {
        parent: String,
    },
    /// A rule: its actions run with the owner's rights on every tenant's rows, invisibly to the
    /// application (`DO ALSO INSERT INTO sink`, `DO INSTEAD NOTHING`).
    Rule {
        name: String,
    },
    /// A policy of the owner's that passes row values to a function that is not LEAKPROOF.
    /// PostgreSQL orders the quals of all policies by cost, so such a function can run before
    /// the isolation predicate and receive other tenants' rows.
    LeakyPolicy {
        name: String,
    },
    /// A policy of the owner's that calls a function (directly, as an operator, or as a domain's
    /// check) that is neither LEAKPROOF nor PostgreSQL's or the extension's: policies run as
    /// whoever queries the table — support staff in admin mode, with their rights, included.
    PolicyRunsOwnerCode {
        name: String,
    },
    /// The table's key scope is `tenant` and its primary key lacks tenant_id.
    PrimaryKeyScope,
    /// A foreign key with tenant_id whose ON DELETE / ON UPDATE SET NULL or SET DEFAULT covers
    /// tenant_id: deleting (or re-keying) a parent row, which the RI trigger does as the owner
    /// across tenants, would set the child's tenant_id to the current tenant (SET DEFAULT) —
    /// moving another tenant's rows into the deleting tenant.
    TenantChangingAction {
        name: String,
    },
    /// A policy other than the extension's on a table distributed by Citus, which recreates it
    /// on the shards as PERMISSIVE: ORed with the isolation policy, it widens what a tenant
    /// reads and writes.
    PolicyOnDistributed {
        name: String,
    },
}

impl Deviation {
    pub fn describe(&self) -> String {
        match self {
            Deviation::ColumnMissing => "column tenant_id is missing".into(),
            Deviation::ColumnType { found } => format!("column tenant_id has type {found}, not uuid"),
            Deviation::ColumnNullable => "column tenant_id is nullable".into(),
            Deviation::ColumnDefault { found: None } => "column tenant_id has no default".into(),
            Deviation::ColumnDefault { found: Some(found) } => {
                format!("column tenant_id defaults to {found}, not {DEFAULT_SQL}")
            }
            Deviation::IndexMissing => "no valid btree index has tenant_id as its first column".into(),
            Deviation::RowSecurityDisabled => "row level security is disabled".into(),
            Deviation::RowSecurityNotForced => "row level security is not forced (the owner bypasses it)".into(),
            Deviation::PolicyMissing { policy } => format!("policy {policy} is missing"),
            Deviation::PolicyDiffers { policy } => format!("policy {policy} differs from the canonical one"),
            Deviation::TriggerMissing { trigger } => format!("quota trigger {trigger} is missing"),
            Deviation::TriggerDiffers { trigger } => {
                format!("quota trigger {trigger} is disabled or differs from the canonical one")
            }
            Deviation::ParentNotEnabled { parent } => format!(
                "its parent {parent} is not tenant-enabled: a query on the parent returns this table's rows of every tenant"
            ),
            Deviation::Rule { name } => format!(
                "rule {name} runs with the owner's rights on every tenant's rows (rules are not allowed on tenant-enabled tables)"
            ),
            Deviation::PrimaryKeyScope => {
                "its key scope is tenant, but the primary key does not include tenant_id".into()
            }
            Deviation::LeakyPolicy { name } => format!(
                "policy {name} passes row values to a function that is not LEAKPROOF, which can run before the \
                 isolation policy and see other tenants' rows"
            ),
            Deviation::PolicyRunsOwnerCode { name } => format!(
                "policy {name} calls a function or uses a type that is neither LEAKPROOF nor built in and read-only, \
                 which runs as whoever reads the table: in admin mode with the admin's rights and every tenant's rows \
                 in view"
            ),
            Deviation::PolicyOnDistributed { name } => format!(
                "policy {name} is on a table distributed by Citus, which recreates every policy on the shards as \
                 PERMISSIVE: ORed with the isolation policy, it would let tenants read and write other tenants' rows"
            ),
            Deviation::TenantChangingAction { name } => format!(
                "foreign key {name} sets tenant_id in its ON DELETE / ON UPDATE action (SET NULL or SET DEFAULT): \
                 deleting a parent row would move the child rows of another tenant"
            ),
        }
    }

    /// What to do about a deviation [`Deviation::repair_sql`] cannot repair (`None`: tenant_enable
    /// repairs it).
    pub fn fix(&self, table: &str) -> Option<String> {
        Some(match self {
            Deviation::ColumnType { .. } => format!(
                "Convert the column (ALTER TABLE {table} ALTER COLUMN tenant_id TYPE uuid USING ...), then call \
                 multitenancy.tenant_enable again."
            ),
            Deviation::ParentNotEnabled { parent } => format!(
                "Tenant-enable the parent too (SELECT multitenancy.tenant_enable('{parent}')), or detach the table from \
                 it (ALTER TABLE {table} NO INHERIT {parent}, or ALTER TABLE {parent} DETACH PARTITION {table})."
            ),
            Deviation::Rule { name } => format!(
                "DROP RULE {} ON {table}; use a trigger, whose code verify() lists for review.",
                pgrx::spi::quote_identifier(name)
            ),
            Deviation::PrimaryKeyScope => format!(
                "Rebuild the primary key with tenant_id: SELECT multitenancy.tenant_key_scope('{table}', 'tenant'), or \
                 make the scope global: SELECT multitenancy.tenant_key_scope('{table}', 'global')."
            ),
            Deviation::LeakyPolicy { name } => format!(
                "DROP POLICY {} ON {table}, or call only LEAKPROOF functions and operators on the table's columns in it \
                 (a superuser may mark a function LEAKPROOF once it cannot reveal its arguments, not even in an error).",
                pgrx::spi::quote_identifier(name)
            ),
            Deviation::PolicyRunsOwnerCode { name } => format!(
                "DROP POLICY {} ON {table}, or write it with built-in types, operators and functions that are not \
                 VOLATILE and the extension's context functions (multitenancy.has_role(), current_user_id(), ...), or \
                 have a superuser mark the function LEAKPROOF once it reveals nothing and changes nothing.",
                pgrx::spi::quote_identifier(name)
            ),
            Deviation::PolicyOnDistributed { name } => format!(
                "DROP POLICY {} ON {table}: on a distributed table the extension's isolation policy is the only one \
                 (put the condition in a view with security_invoker, or in the application's queries).",
                pgrx::spi::quote_identifier(name)
            ),
            Deviation::TenantChangingAction { name } => format!(
                "Drop foreign key {} of {table} and add it again with SET NULL / SET DEFAULT limited to its own columns \
                 (ON DELETE SET NULL (<columns>), PostgreSQL 15 and later; the extension writes it that way when it \
                 builds the key), or with NO ACTION, RESTRICT or CASCADE.",
                pgrx::spi::quote_identifier(name)
            ),
            _ => return None,
        })
    }

    /// The statements that repair this deviation on an empty or fully assigned table; `None`
    /// when it cannot be repaired without a decision (a wrong column type, rows to assign).
    pub fn repair_sql(&self, table: &str) -> Option<Vec<String>> {
        let policy = |name: &str| {
            POLICIES.iter().chain(DISTRIBUTED_POLICIES.iter()).find(|p| p.name == name).expect("known policy")
        };
        let trigger = |name: &str| TRIGGERS.iter().find(|t| t.name == name).expect("known trigger");
        Some(match self {
            // Added without a default first: PostgreSQL evaluates a non-volatile default of a new
            // column at once (for existing rows), and current_tenant_id() needs a context.
            Deviation::ColumnMissing => vec![
                format!("ALTER TABLE {table} ADD COLUMN {TENANT_COLUMN} uuid"),
                format!(
                    "ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} SET DEFAULT {DEFAULT_SQL}, \
                     ALTER COLUMN {TENANT_COLUMN} SET NOT NULL"
                ),
            ],
            Deviation::ColumnType { .. }
            | Deviation::ParentNotEnabled { .. }
            | Deviation::Rule { .. }
            | Deviation::LeakyPolicy { .. }
            | Deviation::PolicyRunsOwnerCode { .. }
            | Deviation::TenantChangingAction { .. }
            | Deviation::PolicyOnDistributed { .. }
            | Deviation::PrimaryKeyScope => return None,
            Deviation::ColumnNullable => {
                vec![format!("ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} SET NOT NULL")]
            }
            Deviation::ColumnDefault { .. } => {
                vec![format!("ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} SET DEFAULT {DEFAULT_SQL}")]
            }
            Deviation::IndexMissing => vec![format!("CREATE INDEX ON {table} ({TENANT_COLUMN})")],
            Deviation::RowSecurityDisabled => vec![format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")],
            Deviation::RowSecurityNotForced => vec![format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY")],
            Deviation::PolicyMissing { policy: name } => vec![policy(name).create_sql(table)],
            Deviation::PolicyDiffers { policy: name } => {
                let p = policy(name);
                vec![p.drop_sql(table), p.create_sql(table)]
            }
            Deviation::TriggerMissing { trigger: name } => vec![trigger(name).create_sql(table)],
            Deviation::TriggerDiffers { trigger: name } => {
                let t = trigger(name);
                vec![t.drop_sql(table), t.create_sql(table)]
            }
        })
    }
}

/// The state of the tenant column, as found in the catalog.
#[derive(Debug, Clone)]
pub struct ColumnState {
    pub attnum: i16,
    pub is_uuid: bool,
    pub type_name: String,
    pub not_null: bool,
    pub default: Option<String>,
}

/// Read the tenant column of a table.
pub fn column_state(relid: pg_sys::Oid) -> Result<Option<ColumnState>> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT a.attnum, a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype, \
                        pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                        pg_catalog.pg_get_expr(d.adbin, d.adrelid) \
                   FROM pg_catalog.pg_attribute a \
                   LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                  WHERE a.attrelid = $1 AND a.attname = $2 AND NOT a.attisdropped",
                None,
                &[relid.into(), TENANT_COLUMN.into()],
            )
            .ctx("spec::column_state")?;
        let Some(row) = rows.into_iter().next() else { return Ok(None) };
        Ok(Some(ColumnState {
            attnum: row.get::<i16>(1).ctx("attnum")?.unwrap_or_default(),
            is_uuid: row.get::<bool>(2).ctx("is_uuid")?.unwrap_or(false),
            type_name: row.get::<String>(3).ctx("type_name")?.unwrap_or_default(),
            not_null: row.get::<bool>(4).ctx("not_null")?.unwrap_or(false),
            default: row.get::<String>(5).ctx("default")?,
        }))
    })
}

fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compare a table with the protected shape: the deviations, in the order they must be repaired
/// (column, index, row level security, policies). Empty means protected.
pub fn inspect(rel: &Relation) -> Result<Vec<Deviation>> {
    registry::with_pinned_search_path(|| inspect_pinned(rel))
}

fn inspect_pinned(rel: &Relation) -> Result<Vec<Deviation>> {
    let mut found = Vec::new();
    let column = column_state(rel.oid)?;
    match &column {
        None => found.push(Deviation::ColumnMissing),
        Some(c) if !c.is_uuid => found.push(Deviation::ColumnType { found: c.type_name.clone() }),
        Some(c) => {
            if !c.not_null {
                found.push(Deviation::ColumnNullable);
            }
            if c.default.as_deref().map(normalize).as_deref() != Some(DEFAULT_DEPARSED) {
                found.push(Deviation::ColumnDefault { found: c.default.clone() });
            }
        }
    }

    let permit = permit_sql();
    let distributed = crate::citus::is_distributed(rel.oid)?;
    Spi::connect(|client| {
        let attnum = column.as_ref().map(|c| c.attnum).unwrap_or(0);
        let flags = client
            .select(
                "SELECT c.relrowsecurity, c.relforcerowsecurity, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                                  JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
                                 WHERE i.indrelid = c.oid AND i.indkey[0] = $2 AND $2 > 0 \
                                   AND i.indpred IS NULL AND i.indisvalid AND am.amname = 'btree') \
                   FROM pg_catalog.pg_class c WHERE c.oid = $1",
                None,
                &[rel.oid.into(), attnum.into()],
            )
            .ctx("spec::inspect flags")?
            .first();
        let rls = flags.get::<bool>(1).ctx("relrowsecurity")?.unwrap_or(false);
        let forced = flags.get::<bool>(2).ctx("relforcerowsecurity")?.unwrap_or(false);
        let indexed = flags.get::<bool>(3).ctx("index")?.unwrap_or(false);
        if !indexed {
            found.push(Deviation::IndexMissing);
        }
        if !rls {
            found.push(Deviation::RowSecurityDisabled);
        }
        if !forced {
            found.push(Deviation::RowSecurityNotForced);
        }

        for spec in policies(distributed) {
            let rows = client
                .select(
                    "SELECT p.polpermissive, p.polcmd = '*', p.polroles = '{0}'::pg_catalog.oid[], \
                            pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                            pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
                       FROM pg_catalog.pg_policy p WHERE p.polrelid = $1 AND p.polname = $2",
                    None,
                    &[rel.oid.into(), spec.name.into()],
                )
                .ctx("spec::inspect policies")?;
            let Some(row) = rows.into_iter().next() else {
                found.push(Deviation::PolicyMissing { policy: spec.name });
                continue;
            };
            let canonical = row.get::<bool>(1).ctx("polpermissive")? == Some(spec.permissive)
                && row.get::<bool>(2).ctx("polcmd")? == Some(true)
                && row.get::<bool>(3).ctx("polroles")? == Some(true)
                && row.get::<String>(4).ctx("polqual")?.map(|s| normalize(&s)).as_deref()
                    == Some(spec.expression_deparsed(permit))
                && row.get::<String>(5).ctx("polwithcheck")?.map(|s| normalize(&s)).as_deref()
                    == Some(spec.expression_deparsed(permit));
            if !canonical {
                found.push(Deviation::PolicyDiffers { policy: spec.name });
            }
        }

        for spec in triggers(distributed) {
            let rows = client
                .select(
                    "SELECT t.tgenabled IN ('O', 'A') AND t.tgtype = $3 AND t.tgfoid = $4::pg_catalog.regproc \
                            AND t.tgnargs = 0 AND t.tgqual IS NULL AND t.tgattr = ''::pg_catalog.int2vector \
                            AND t.tgoldtable IS NULL AND t.tgnewtable IS NULL AND NOT t.tgdeferrable \
                       FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = $2",
                    None,
                    &[rel.oid.into(), spec.name.into(), spec.tgtype().into(), spec.function.into()],
                )
                .ctx("spec::inspect triggers")?;
            match rows.into_iter().next() {
                None => found.push(Deviation::TriggerMissing { trigger: spec.name }),
                Some(row) if row.get::<bool>(1).ctx("trigger")? != Some(true) => {
                    found.push(Deviation::TriggerDiffers { trigger: spec.name })
                }
                Some(_) => {}
            }
        }

        let rules = client
            .select(
                "SELECT r.rulename::text FROM pg_catalog.pg_rewrite r \
                  WHERE r.ev_class = $1 AND r.rulename <> '_RETURN' ORDER BY 1",
                None,
                &[rel.oid.into()],
            )
            .ctx("spec::inspect rules")?;
        for row in rules {
            found.push(Deviation::Rule { name: row.get::<String>(1).ctx("rulename")?.unwrap_or_default() });
        }

        #[cfg(feature = "pg14")]
        const DELETE_SETS_TENANT: &str = "c.confdeltype IN ('n', 'd')";
        #[cfg(not(feature = "pg14"))]
        const DELETE_SETS_TENANT: &str = "c.confdeltype IN ('n', 'd') \
             AND (c.confdelsetcols IS NULL OR pg_catalog.cardinality(c.confdelsetcols) = 0 \
                  OR $2 = ANY (c.confdelsetcols))";
        let actions = client
            .select(
                &format!(
                    "SELECT c.conname::text FROM pg_catalog.pg_constraint c \
                      WHERE c.conrelid = $1 AND c.contype = 'f' AND $2 = ANY (c.conkey) \
                        AND ({DELETE_SETS_TENANT} OR c.confupdtype IN ('n', 'd')) ORDER BY 1"
                ),
                None,
                &[rel.oid.into(), attnum.into()],
            )
            .ctx("spec::inspect foreign-key actions")?;
        for row in actions {
            found.push(Deviation::TenantChangingAction {
                name: row.get::<String>(1).ctx("conname")?.unwrap_or_default(),
            });
        }

        // The owner's policies, and whether one (its USING or WITH CHECK) calls a function —
        // directly, as an operator, aggregate or window function; read from the expression, as
        // PostgreSQL records no dependency on built-ins — that may run or change something with
        // the reader's rights: one that is not LEAKPROOF, unless it is a built-in that is not
        // VOLATILE and runs no query (the XML exports do), or one of the extension's read-only
        // context functions; or uses a type that is not built in (the input of a domain, or of
        // an array, composite or range over one, runs its checks).
        let owner_policies = client
            .select(
                "SELECT p.polname::text, p.polqual::text, EXISTS ( \
                        SELECT 1 FROM pg_catalog.regexp_matches( \
                                 coalesce(p.polqual::text, '') || coalesce(p.polwithcheck::text, ''), \
                                 ':(?:funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') m(id) \
                          JOIN pg_catalog.pg_proc f ON f.oid = m.id[1]::pg_catalog.oid \
                         WHERE NOT f.proleakproof \
                           AND NOT (f.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND f.provolatile <> 'v' \
                                    AND f.proname !~ 'xml') \
                           AND NOT (f.pronamespace = 'multitenancy'::pg_catalog.regnamespace AND f.proname = ANY ($3))) \
                     OR EXISTS ( \
                        SELECT 1 FROM pg_catalog.pg_depend d \
                          JOIN pg_catalog.pg_type t ON t.oid = d.refobjid \
                         WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid \
                           AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass \
                           AND t.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace) \
                   FROM pg_catalog.pg_policy p \
                  WHERE p.polrelid = $1 AND p.polname <> ALL ($2) ORDER BY 1",
                None,
                &[
                    rel.oid.into(),
                    policies(distributed).iter().map(|p| p.name).collect::<Vec<_>>().into(),
                    POLICY_FUNCTIONS.to_vec().into(),
                ],
            )
            .ctx("spec::inspect owner policies")?;
        for row in owner_policies {
            let name = row.get::<String>(1).ctx("polname")?.unwrap_or_default();
            let qual = row.get::<String>(2).ctx("polqual")?;
            if distributed {
                found.push(Deviation::PolicyOnDistributed { name });
            } else if qual.is_some_and(|qual| leaks_row_values(&qual)) {
                found.push(Deviation::LeakyPolicy { name });
            } else if row.get::<bool>(3).ctx("owner code")?.unwrap_or(false) {
                found.push(Deviation::PolicyRunsOwnerCode { name });
            }
        }
        Ok::<_, crate::error::MtError>(())
    })?;

    if registry::key_scope(rel.oid)?.as_deref() == Some("tenant")
        && crate::catalog::primary_key(rel.oid)?.is_some_and(|(_, columns)| !columns.iter().any(|c| c == TENANT_COLUMN))
    {
        found.push(Deviation::PrimaryKeyScope);
    }
    for parent in crate::catalog::oid_column(
        "SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1 ORDER BY inhseqno",
        &[rel.oid.into()],
    )? {
        if !registry::is_enabled(parent)? {
            found.push(Deviation::ParentNotEnabled { parent: Relation::lookup(parent)?.display() });
        }
    }
    Ok(found)
}

/// The extension's functions an owner's policy may call: they read the context and the
/// registry, and change nothing.
const POLICY_FUNCTIONS: [&str; 12] = [
    "current_tenant_id",
    "current_tenant_id_or_null",
    "current_user_id",
    "current_user_id_or_null",
    "has_role",
    "tenant_role",
    "is_member",
    "setting_get",
    "feature_enabled",
    "domain_normalize",
    "_admin_mode",
    "_installed",
];

/// Whether an expression (a node tree as `pg_policy.polqual` stores it) passes a column value to
/// a function or operator that is not LEAKPROOF — PostgreSQL's own test for what may run before
/// a security barrier (`contain_leaked_vars`; node types it does not know, such as sub-selects,
/// count as leaky).
fn leaks_row_values(node_text: &str) -> bool {
    let Ok(text) = std::ffi::CString::new(node_text) else { return true };
    // SAFETY: stringToNode parses a node tree PostgreSQL printed; the result lives in the
    // current memory context and is only read.
    unsafe {
        let node = pg_sys::stringToNode(text.as_ptr()) as *mut pg_sys::Node;
        pg_sys::contain_leaked_vars(node)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use crate::catalog::Relation;

    fn protected_table(name: &str) -> Relation {
        // No primary key: its UNIQUE (tenant_id, id) companion would be a second tenant index.
        // The DDL guard would refuse the tampering these tests do on purpose.
        Spi::run(&format!("SET LOCAL multitenancy.ddl_guard = off; CREATE TABLE {name} (id bigint, note text)"))
            .unwrap();
        Spi::run(&format!("SELECT multitenancy.tenant_enable('{name}')")).unwrap();
        let oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{name}'::regclass::oid")).unwrap().unwrap();
        Relation::lookup(oid).unwrap()
    }

    #[pg_test]
    fn an_enabled_table_matches_the_spec() {
        let rel = protected_table("spec_clean");
        assert_eq!(inspect(&rel).unwrap(), vec![]);
    }

    #[pg_test]
    fn an_ordinary_table_deviates_everywhere() {
        Spi::run("CREATE TABLE spec_plain (id int)").unwrap();
        let oid = Spi::get_one::<pg_sys::Oid>("SELECT 'spec_plain'::regclass::oid").unwrap().unwrap();
        let found = inspect(&Relation::lookup(oid).unwrap()).unwrap();
        assert_eq!(
            found,
            vec![
                Deviation::ColumnMissing,
                Deviation::IndexMissing,
                Deviation::RowSecurityDisabled,
                Deviation::RowSecurityNotForced,
                Deviation::PolicyMissing { policy: "multitenancy_access" },
                Deviation::PolicyMissing { policy: "multitenancy_isolation" },
                Deviation::TriggerMissing { trigger: "multitenancy_usage_row" },
                Deviation::TriggerMissing { trigger: "multitenancy_usage_statement" },
            ]
        );
    }

    #[pg_test]
    fn each_tampering_is_detected() {
        let cases: [(&str, Deviation); 9] = [
            (
                "ALTER TABLE {t} DISABLE TRIGGER multitenancy_usage_row",
                Deviation::TriggerDiffers { trigger: "multitenancy_usage_row" },
            ),
            (
                "DROP TRIGGER multitenancy_usage_statement ON {t}",
                Deviation::TriggerMissing { trigger: "multitenancy_usage_statement" },
            ),
            ("ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY", Deviation::RowSecurityNotForced),
            ("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY", Deviation::RowSecurityDisabled),
            ("ALTER TABLE {t} ALTER COLUMN tenant_id DROP NOT NULL", Deviation::ColumnNullable),
            ("ALTER TABLE {t} ALTER COLUMN tenant_id DROP DEFAULT", Deviation::ColumnDefault { found: None }),
            ("DROP INDEX {t}_tenant_id_idx", Deviation::IndexMissing),
            (
                "ALTER POLICY multitenancy_isolation ON {t} USING (true)",
                Deviation::PolicyDiffers { policy: "multitenancy_isolation" },
            ),
            ("DROP POLICY multitenancy_access ON {t}", Deviation::PolicyMissing { policy: "multitenancy_access" }),
        ];
        for (i, (tamper, expected)) in cases.into_iter().enumerate() {
            let table = format!("spec_tampered_{i}");
            let rel = protected_table(&table);
            let tamper = tamper.replace("{t}", &table);
            Spi::run(&tamper).unwrap();
            assert_eq!(inspect(&rel).unwrap(), vec![expected], "after {tamper}");
        }
    }

    #[pg_test]
    fn a_policy_for_other_roles_or_commands_is_not_the_canonical_one() {
        let rel = protected_table("spec_roles");
        Spi::run("ALTER POLICY multitenancy_isolation ON spec_roles TO pg_monitor").unwrap();
        assert_eq!(inspect(&rel).unwrap(), vec![Deviation::PolicyDiffers { policy: "multitenancy_isolation" }]);
    }

    #[pg_test]
    fn inspection_does_not_depend_on_the_callers_search_path() {
        let rel = protected_table("spec_path");
        Spi::run("SET LOCAL search_path = multitenancy, public").unwrap();
        assert_eq!(inspect(&rel).unwrap(), vec![]);
        let after = Spi::get_one::<String>("SELECT current_setting('search_path')").unwrap();
        assert_eq!(after.as_deref(), Some("multitenancy, public"), "the caller's search_path is restored");
    }
}
