//! Constraint hardening: the keys and grants of a tenant-enabled table, beyond its policies.
//!
//! Unique and foreign-key checks run as the table owner and ignore row level security, so a
//! duplicate-key or foreign-key error can tell a tenant that a value exists in another tenant.
//! A hardened table has
//! - every unique constraint and unique index keyed by tenant_id (rebuilt with tenant_id
//!   leading, same name): a value is unique per tenant, and a duplicate only collides inside it;
//! - every exclusion constraint with `tenant_id WITH =` leading: rows of different tenants never
//!   conflict, so a 23P01 says nothing about another tenant's rows;
//! - `UNIQUE (tenant_id, <primary key>)` next to the primary key, which stays as it is: the
//!   target of composite foreign keys;
//! - foreign keys to other tenant-enabled tables as `(tenant_id, x) REFERENCES parent
//!   (tenant_id, y)`: a row can only reference a row of its own tenant, and referencing another
//!   tenant's id fails exactly like referencing an id that does not exist;
//! - no TRUNCATE (which ignores RLS), TRIGGER or REFERENCES (table or column) privilege for any
//!   role but the owner.
//!
//! [`weaknesses`] finds what is missing (the DDL guard and `verify()` use it), [`harden`]
//! builds it (`tenant_enable` and the DDL guard use it).
use crate::catalog::Relation;
use crate::error::{notice, MtError, Result, SpiContext};
use crate::registry;
use crate::tables::busy;
use crate::tables::spec;
use crate::tables::spec::TENANT_COLUMN;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_qualified_identifier};
use std::collections::HashSet;

/// Privileges no application role may hold on a tenant-enabled table.
pub const UNSAFE_PRIVILEGES: [&str; 3] = ["TRUNCATE", "TRIGGER", "REFERENCES"];

/// A foreign key, read from the catalog, that can be rebuilt with tenant_id.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub name: String,
    pub table: Relation,
    pub parent: Relation,
    /// Referencing and referenced columns, quoted.
    columns: Vec<String>,
    parent_columns: Vec<String>,
    on_update: char,
    on_delete: char,
    delete_set_columns: Option<Vec<String>>,
    match_full: bool,
    deferrable: bool,
    deferred: bool,
    validated: bool,
    /// The index of the parent that the foreign key uses.
    pub parent_index: pg_sys::Oid,
}

impl ForeignKey {
    #[cfg_attr(feature = "pg14", allow(unused_variables))]
    fn action(code: char, set_columns: Option<&[String]>) -> std::result::Result<String, String> {
        Ok(match code {
            'a' => "NO ACTION".into(),
            'r' => "RESTRICT".into(),
            'c' => "CASCADE".into(),
            // With tenant_id in the key, SET NULL / SET DEFAULT must leave tenant_id alone, which
            // takes PostgreSQL 15's column list.
            #[cfg(feature = "pg14")]
            'n' | 'd' => {
                return Err(
                    "ON DELETE SET NULL / SET DEFAULT of a key with tenant_id would clear or change tenant_id; \
                            PostgreSQL 14 cannot limit it to the other columns (15 can): use another action"
                        .into(),
                )
            }
            #[cfg(not(feature = "pg14"))]
            'n' => format!("SET NULL ({})", set_columns.ok_or("ON UPDATE SET NULL would clear tenant_id")?.join(", ")),
            #[cfg(not(feature = "pg14"))]
            'd' => format!(
                "SET DEFAULT ({})",
                set_columns.ok_or("ON UPDATE SET DEFAULT would change tenant_id")?.join(", ")
            ),
            other => return Err(format!("unknown referential action '{other}'")),
        })
    }

    /// `ALTER TABLE child DROP CONSTRAINT fk`.
    pub fn drop_sql(&self) -> String {
        format!("ALTER TABLE {} DROP CONSTRAINT {}", self.table.sql(), quote_identifier(&self.name))
    }

    /// `ALTER TABLE child ADD CONSTRAINT fk FOREIGN KEY (tenant_id, ...) REFERENCES parent
    /// (tenant_id, ...)`, keeping the actions, match type, deferrability and validation state.
    pub fn add_composite_sql(&self) -> Result<String> {
        let cannot = |reason: String| MtError::CannotHarden {
            table: self.table.display(),
            object: format!("foreign key {}", self.name),
            reason,
        };
        let set_columns = self.delete_set_columns.clone().unwrap_or_else(|| self.columns.clone());
        let on_update = Self::action(self.on_update, None).map_err(cannot)?;
        let on_delete = Self::action(self.on_delete, Some(&set_columns)).map_err(cannot)?;
        Ok(format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({TENANT_COLUMN}, {columns}) \
             REFERENCES {parent} ({TENANT_COLUMN}, {parent_columns}){full} ON UPDATE {on_update} \
             ON DELETE {on_delete}{deferrable}{valid}",
            table = self.table.sql(),
            name = quote_identifier(&self.name),
            columns = self.columns.join(", "),
            parent = self.parent.sql(),
            parent_columns = self.parent_columns.join(", "),
            full = if self.match_full { " MATCH FULL" } else { "" },
            deferrable = match (self.deferrable, self.deferred) {
                (false, _) => "",
                (true, false) => " DEFERRABLE INITIALLY IMMEDIATE",
                (true, true) => " DEFERRABLE INITIALLY DEFERRED",
            },
            valid = if self.validated { "" } else { " NOT VALID" },
        ))
    }
}

/// One way a tenant-enabled table's keys or grants fall short of the hardened shape.
#[derive(Debug, Clone)]
pub enum Weakness {
    /// A unique constraint (or unique index) whose key does not include tenant_id.
    Unique { name: String, index: pg_sys::Oid, constraint: Option<pg_sys::Oid> },
    /// An exclusion constraint without `tenant_id WITH =`: its conflicts are checked across
    /// tenants, so a 23P01 tells a tenant about another tenant's rows.
    Exclusion { name: String, constraint: pg_sys::Oid },
    /// The table has a primary key but no `UNIQUE (tenant_id, <pk>)`.
    TenantKeyMissing { columns: Vec<String> },
    /// A foreign key to a tenant-enabled table without tenant_id.
    ForeignKey(ForeignKey),
    /// A foreign key from a table that is not tenant-enabled into this one.
    GlobalReference(ForeignKey),
    /// A role other than the owner holds TRUNCATE, TRIGGER or REFERENCES.
    Grant { grantee: String, privileges: Vec<String> },
}

impl Weakness {
    pub fn describe(&self) -> String {
        match self {
            Weakness::Unique { name, constraint: Some(_), .. } => {
                format!("unique constraint {name} does not include tenant_id")
            }
            Weakness::Unique { name, constraint: None, .. } => {
                format!("unique index {name} does not include tenant_id")
            }
            Weakness::Exclusion { name, .. } => {
                format!(
                    "exclusion constraint {name} does not include tenant_id WITH = (it compares rows across tenants)"
                )
            }
            Weakness::TenantKeyMissing { columns } => format!(
                "no unique constraint on ({TENANT_COLUMN}, {}) for tenant-scoped foreign keys",
                columns.join(", ")
            ),
            Weakness::ForeignKey(fk) => format!(
                "foreign key {} references tenant-enabled table {} without tenant_id",
                fk.name,
                fk.parent.display()
            ),
            Weakness::GlobalReference(fk) => format!(
                "foreign key {} of {} (not tenant-enabled) references tenant-enabled table {}",
                fk.name,
                fk.table.display(),
                fk.parent.display()
            ),
            Weakness::Grant { grantee, privileges } => {
                format!("{} granted to {grantee}", privileges.join(", "))
            }
        }
    }
}

/// The key columns of the primary key, quoted, and their attribute numbers.
fn primary_key(relid: pg_sys::Oid) -> Result<Option<(Vec<String>, Vec<i16>)>> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT pg_catalog.quote_ident(a.attname), a.attnum \
                   FROM pg_catalog.pg_index i \
                   CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, n) \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = $1 AND i.indisprimary AND k.n <= i.indnkeyatts \
                  ORDER BY k.n",
                None,
                &[relid.into()],
            )
            .ctx("hardening::primary_key")?;
        let mut names = Vec::new();
        let mut attnums = Vec::new();
        for row in rows {
            names.push(row.get::<String>(1).ctx("pk name")?.unwrap_or_default());
            attnums.push(row.get::<i16>(2).ctx("pk attnum")?.unwrap_or_default());
        }
        Ok(if names.is_empty() { None } else { Some((names, attnums)) })
    })
}

fn tenant_attnum(relid: pg_sys::Oid) -> Result<Option<i16>> {
    Ok(crate::tables::spec::column_state(relid)?.map(|c| c.attnum))
}

/// Foreign keys matching `filter` (`c.conrelid = $1` or `c.confrelid = $1`) that do not
/// include the tenant column on the referencing side.
fn foreign_keys(relid: pg_sys::Oid, incoming: bool) -> Result<Vec<ForeignKey>> {
    #[cfg(feature = "pg14")]
    const DELETE_SET: &str = "NULL::text[]";
    #[cfg(not(feature = "pg14"))]
    const DELETE_SET: &str = "(SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.n) \
          FROM pg_catalog.unnest(c.confdelsetcols) WITH ORDINALITY k(attnum, n) \
          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum)";
    let side = if incoming { "c.confrelid" } else { "c.conrelid" };
    let sql = format!(
        "SELECT c.oid, c.conname::text, c.conrelid, c.confrelid, \
           (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.n) \
              FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(attnum, n) \
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), \
           (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.n) \
              FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY k(attnum, n) \
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum), \
           c.confupdtype::text, c.confdeltype::text, c.confmatchtype = 'f', c.condeferrable, c.condeferred, \
           c.convalidated, c.conindid, {DELETE_SET}, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.conrelid \
                      AND a.attname = $2 AND a.attnum = ANY (c.conkey)) \
           FROM pg_catalog.pg_constraint c \
          WHERE {side} = $1 AND c.contype = 'f' AND c.conparentid = 0 \
          ORDER BY c.conname"
    );
    let rows: Vec<_> = Spi::connect(|client| {
        let rows = client.select(&sql, None, &[relid.into(), TENANT_COLUMN.into()]).ctx("hardening::foreign_keys")?;
        let mut out = Vec::new();
        for row in rows {
            let has_tenant = row.get::<bool>(15).ctx("fk tenant")?.unwrap_or(false);
            if has_tenant {
                continue;
            }
            let first = |s: Option<String>| s.and_then(|s| s.chars().next()).unwrap_or('a');
            out.push((
                row.get::<pg_sys::Oid>(1).ctx("fk oid")?.unwrap_or_default(),
                row.get::<String>(2).ctx("fk name")?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(3).ctx("fk conrelid")?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(4).ctx("fk confrelid")?.unwrap_or_default(),
                row.get::<Vec<String>>(5).ctx("fk columns")?.unwrap_or_default(),
                row.get::<Vec<String>>(6).ctx("fk parent columns")?.unwrap_or_default(),
                first(row.get::<String>(7).ctx("fk on update")?),
                first(row.get::<String>(8).ctx("fk on delete")?),
                row.get::<bool>(9).ctx("fk match")?.unwrap_or(false),
                row.get::<bool>(10).ctx("fk deferrable")?.unwrap_or(false),
                row.get::<bool>(11).ctx("fk deferred")?.unwrap_or(false),
                row.get::<bool>(12).ctx("fk validated")?.unwrap_or(true),
                row.get::<pg_sys::Oid>(13).ctx("fk index")?.unwrap_or_default(),
                row.get::<Vec<String>>(14).ctx("fk delete set columns")?,
            ));
        }
        Ok::<_, MtError>(out)
    })?;
    rows.into_iter()
        .map(|r| {
            Ok(ForeignKey {
                name: r.1,
                table: Relation::lookup(r.2)?,
                parent: Relation::lookup(r.3)?,
                columns: r.4,
                parent_columns: r.5,
                on_update: r.6,
                on_delete: r.7,
                match_full: r.8,
                deferrable: r.9,
                deferred: r.10,
                validated: r.11,
                parent_index: r.12,
                delete_set_columns: r.13,
            })
        })
        .collect()
}

/// What `rel` (tenant-enabled, or about to be: `enabled` must contain it) lacks.
pub fn weaknesses(rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<Vec<Weakness>> {
    registry::with_pinned_search_path(|| weaknesses_pinned(rel, enabled))
}

fn weaknesses_pinned(rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<Vec<Weakness>> {
    let mut found = Vec::new();
    let Some(tenant) = tenant_attnum(rel.oid)? else { return Ok(found) };

    // Unique indexes (and the constraints they back) without tenant_id in their key; indexes
    // that are partitions of a parent's index follow the parent's.
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT i.indexrelid, ic.relname::text, con.oid \
                   FROM pg_catalog.pg_index i \
                   JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                   LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid \
                        AND con.conrelid = i.indrelid AND con.contype = 'u' \
                  WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indisprimary \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) k \
                                     WHERE i.indkey[k] = $2 AND i.indclass[k] = ( \
                                           SELECT oc.oid FROM pg_catalog.pg_opclass oc \
                                             JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod \
                                            WHERE am.amname = 'btree' AND oc.opcdefault \
                                              AND oc.opcintype = 'pg_catalog.uuid'::pg_catalog.regtype)) \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid) \
                  ORDER BY ic.relname",
                None,
                &[rel.oid.into(), tenant.into()],
            )
            .ctx("hardening::unique")?;
        for row in rows {
            found.push(Weakness::Unique {
                index: row.get::<pg_sys::Oid>(1).ctx("unique index")?.unwrap_or_default(),
                name: row.get::<String>(2).ctx("unique name")?.unwrap_or_default(),
                constraint: row.get::<pg_sys::Oid>(3).ctx("unique constraint")?,
            });
        }
        Ok::<_, MtError>(())
    })?;

    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT con.oid, con.conname::text FROM pg_catalog.pg_constraint con \
                   JOIN pg_catalog.pg_index i ON i.indexrelid = con.conindid \
                  WHERE con.conrelid = $1 AND con.contype = 'x' AND con.conparentid = 0 \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) k \
                                     WHERE i.indkey[k] = $2 \
                                       AND con.conexclop[k + 1] = 'pg_catalog.=(pg_catalog.uuid, pg_catalog.uuid)'::pg_catalog.regoperator) \
                  ORDER BY 2",
                None,
                &[rel.oid.into(), tenant.into()],
            )
            .ctx("hardening::exclusion")?;
        for row in rows {
            found.push(Weakness::Exclusion {
                constraint: row.get::<pg_sys::Oid>(1).ctx("exclusion constraint")?.unwrap_or_default(),
                name: row.get::<String>(2).ctx("exclusion name")?.unwrap_or_default(),
            });
        }
        Ok::<_, MtError>(())
    })?;

    if let Some((columns, attnums)) = primary_key(rel.oid)? {
        if !attnums.contains(&tenant) {
            let mut key = vec![tenant];
            key.extend(&attnums);
            let exists = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                   WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
                     AND i.indexprs IS NULL AND i.indnkeyatts = pg_catalog.cardinality($2::pg_catalog.int2[]) \
                     AND (SELECT pg_catalog.array_agg(i.indkey[k]) \
                            FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) k) @> $2::pg_catalog.int2[])",
                &[rel.oid.into(), key.into()],
            )
            .ctx("hardening::tenant key")?
            .unwrap_or(false);
            if !exists {
                found.push(Weakness::TenantKeyMissing { columns });
            }
        }
    }

    for fk in foreign_keys(rel.oid, false)? {
        if enabled.contains(&fk.parent.oid) {
            found.push(Weakness::ForeignKey(fk));
        }
    }
    for fk in foreign_keys(rel.oid, true)? {
        if !enabled.contains(&fk.table.oid) {
            found.push(Weakness::GlobalReference(fk));
        }
    }

    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END, \
                        pg_catalog.array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) \
                   FROM pg_catalog.pg_class c \
                   CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a \
                   LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
                  WHERE c.oid = $1 AND a.grantee <> c.relowner AND a.privilege_type = ANY ($2) \
                  GROUP BY 1 \
                 UNION ALL \
                 SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END, \
                        ARRAY['REFERENCES (' || pg_catalog.string_agg(pg_catalog.quote_ident(att.attname), ', ' \
                                                                     ORDER BY att.attnum) || ')'] \
                   FROM pg_catalog.pg_attribute att \
                   JOIN pg_catalog.pg_class c ON c.oid = att.attrelid \
                   CROSS JOIN LATERAL pg_catalog.aclexplode(att.attacl) a \
                   LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
                  WHERE att.attrelid = $1 AND att.attacl IS NOT NULL AND NOT att.attisdropped \
                    AND a.grantee <> c.relowner AND a.privilege_type = 'REFERENCES' \
                  GROUP BY 1 ORDER BY 1, 2",
                None,
                &[rel.oid.into(), UNSAFE_PRIVILEGES.to_vec().into()],
            )
            .ctx("hardening::grants")?;
        for row in rows {
            found.push(Weakness::Grant {
                grantee: row.get::<String>(1).ctx("grantee")?.unwrap_or_default(),
                privileges: row.get::<Vec<String>>(2).ctx("privileges")?.unwrap_or_default(),
            });
        }
        Ok::<_, MtError>(())
    })?;
    Ok(found)
}

fn is_forced(relid: pg_sys::Oid) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT relforcerowsecurity FROM pg_catalog.pg_class WHERE oid = $1",
        &[relid.into()],
    )
    .ctx("hardening::is_forced")
    .map(|f| f.unwrap_or(false))
}

/// `CREATE UNIQUE INDEX ... (a, b)` as `... (tenant_id, a, b)` — the index definition PostgreSQL
/// prints, with tenant_id put first.
fn unique_index_with_tenant(rel: &Relation, index: pg_sys::Oid, name: &str) -> Result<String> {
    let (definition, am) = Spi::get_two_with_args::<String, String>(
        "SELECT pg_catalog.pg_get_indexdef(i.oid), am.amname::text FROM pg_catalog.pg_class i \
           JOIN pg_catalog.pg_am am ON am.oid = i.relam WHERE i.oid = $1",
        &[index.into()],
    )
    .ctx("hardening::indexdef")?;
    let (definition, am) = (definition.unwrap_or_default(), am.unwrap_or_default());
    let table = quote_qualified_identifier(&rel.schema, &rel.name);
    let head = format!("CREATE UNIQUE INDEX {} ON ", quote_identifier(name));
    let tail = format!("{table} USING {am} (");
    let rest = definition
        .strip_prefix(&head)
        .and_then(|r| r.strip_prefix("ONLY ").unwrap_or(r).strip_prefix(&tail))
        .ok_or_else(|| MtError::CannotHarden {
            table: rel.display(),
            object: format!("unique index {name}"),
            reason: format!("unexpected definition: {definition}"),
        })?;
    Ok(format!("{head}{tail}{TENANT_COLUMN}, {rest}"))
}

fn unique_constraint_with_tenant(rel: &Relation, constraint: pg_sys::Oid, name: &str) -> Result<String> {
    let definition =
        Spi::get_one_with_args::<String>("SELECT pg_catalog.pg_get_constraintdef($1)", &[constraint.into()])
            .ctx("hardening::constraintdef")?
            .unwrap_or_default();
    // "UNIQUE [NULLS NOT DISTINCT ](a, b)[ INCLUDE (...)][ DEFERRABLE ...]": the first '(' opens the key.
    let open =
        definition.find('(').filter(|_| definition.starts_with("UNIQUE")).ok_or_else(|| MtError::CannotHarden {
            table: rel.display(),
            object: format!("unique constraint {name}"),
            reason: format!("unexpected definition: {definition}"),
        })?;
    let (before, after) = definition.split_at(open + 1);
    Ok(format!(
        "ALTER TABLE {} DROP CONSTRAINT {name_q}, ADD CONSTRAINT {name_q} {before}{TENANT_COLUMN}, {after}",
        rel.sql(),
        name_q = quote_identifier(name)
    ))
}

/// `EXCLUDE USING gist (a WITH =, b WITH &&)` as `EXCLUDE USING gist (tenant_id WITH =, a WITH
/// =, b WITH &&)`: rows of different tenants never conflict. GiST needs an operator class for
/// uuid (the btree_gist extension); other access methods take one column only.
fn exclusion_with_tenant(rel: &Relation, constraint: pg_sys::Oid, name: &str) -> Result<String> {
    let (definition, usable) = Spi::get_two_with_args::<String, bool>(
        "SELECT pg_catalog.pg_get_constraintdef(con.oid), \
                EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc \
                         WHERE oc.opcmethod = ic.relam AND oc.opcdefault \
                           AND oc.opcintype = 'pg_catalog.uuid'::pg_catalog.regtype) \
           FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class ic ON ic.oid = con.conindid \
          WHERE con.oid = $1",
        &[constraint.into()],
    )
    .ctx("hardening::exclusiondef")?;
    let definition = definition.unwrap_or_default();
    let cannot = |reason: String| MtError::CannotHarden {
        table: rel.display(),
        object: format!("exclusion constraint {name}"),
        reason,
    };
    let open = ["EXCLUDE USING gist (", "EXCLUDE USING btree ("]
        .iter()
        .find(|head| definition.starts_with(*head))
        .map(|head| head.len())
        .ok_or_else(|| cannot(format!("only GiST and btree exclusion constraints can take tenant_id: {definition}")))?;
    if definition.contains(&format!("{TENANT_COLUMN} WITH ")) {
        return Err(cannot(format!(
            "it compares {TENANT_COLUMN} with another operator than =, so rows of different tenants conflict; \
             change it to {TENANT_COLUMN} WITH ="
        )));
    }
    if usable != Some(true) {
        return Err(cannot(
            "its index method has no operator class for uuid; a superuser can add one with CREATE EXTENSION btree_gist"
                .into(),
        ));
    }
    let (before, after) = definition.split_at(open);
    Ok(format!(
        "ALTER TABLE {} DROP CONSTRAINT {name_q}, ADD CONSTRAINT {name_q} {before}{TENANT_COLUMN} WITH =, {after}",
        rel.sql(),
        name_q = quote_identifier(name)
    ))
}

/// Build the hardened shape on `rel`; `enabled` must contain `rel`. Runs as the caller (the
/// table owner); every change is announced with a NOTICE. Returns what was changed.
pub fn harden(rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<Vec<String>> {
    registry::with_pinned_search_path(|| harden_pinned(rel, enabled))
}

fn harden_pinned(rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<Vec<String>> {
    let found = weaknesses_pinned(rel, enabled)?;
    let rebuilt: HashSet<pg_sys::Oid> = found
        .iter()
        .filter_map(|w| match w {
            Weakness::Unique { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    // Foreign keys to turn composite: this table's own, and those of tenant-enabled tables that
    // reference it (enabled before it, or in any order).
    let mut to_convert: Vec<ForeignKey> = found
        .iter()
        .filter_map(|w| match w {
            Weakness::ForeignKey(fk) => Some(fk.clone()),
            _ => None,
        })
        .collect();
    for w in &found {
        if let Weakness::GlobalReference(fk) = w {
            if rebuilt.contains(&fk.parent_index) {
                return Err(MtError::CannotHarden {
                    table: rel.display(),
                    object: format!("the unique key used by foreign key {} of {}", fk.name, fk.table.display()),
                    reason: format!(
                        "{} is not tenant-enabled; enable it first, or drop the foreign key",
                        fk.table.display()
                    ),
                });
            }
        }
    }
    for fk in foreign_keys(rel.oid, true)? {
        if enabled.contains(&fk.table.oid) && fk.table.oid != rel.oid {
            to_convert.push(fk);
        }
    }

    let mut statements = Vec::new();
    let mut changes = Vec::new();
    for fk in &to_convert {
        statements.push(fk.drop_sql());
    }
    for w in &found {
        match w {
            Weakness::Unique { name, constraint: Some(constraint), .. } => {
                statements.push(unique_constraint_with_tenant(rel, *constraint, name)?);
                changes.push(format!("unique constraint {name} now includes tenant_id"));
            }
            Weakness::Unique { name, index, constraint: None } => {
                let create = unique_index_with_tenant(rel, *index, name)?;
                statements.push(format!("DROP INDEX {}", quote_qualified_identifier(&rel.schema, name)));
                statements.push(create);
                changes.push(format!("unique index {name} now includes tenant_id"));
            }
            Weakness::Exclusion { name, constraint } => {
                statements.push(exclusion_with_tenant(rel, *constraint, name)?);
                changes.push(format!("exclusion constraint {name} now includes tenant_id WITH ="));
            }
            Weakness::TenantKeyMissing { columns } => {
                statements.push(format!(
                    "ALTER TABLE {} ADD UNIQUE ({TENANT_COLUMN}, {})",
                    rel.sql(),
                    columns.join(", ")
                ));
                changes.push(format!("added UNIQUE ({TENANT_COLUMN}, {})", columns.join(", ")));
            }
            Weakness::Grant { grantee, privileges } => {
                statements.push(format!("REVOKE {} ON {} FROM {grantee}", privileges.join(", "), rel.sql()));
                changes.push(format!("revoked {} from {grantee}", privileges.join(", ")));
            }
            Weakness::ForeignKey(_) | Weakness::GlobalReference(_) => {}
        }
    }
    // PostgreSQL checks the existing rows of a new foreign key with a query as the owner, and
    // FORCE ROW LEVEL SECURITY would filter it by a tenant context a migration does not have.
    // Within this transaction (the tables are locked by the ALTERs) the check sees every row;
    // FORCE comes back right after.
    let mut forced = Vec::new();
    for fk in &to_convert {
        for table in [&fk.table, &fk.parent] {
            if !forced.iter().any(|t: &Relation| t.oid == table.oid) && is_forced(table.oid)? {
                forced.push(table.clone());
            }
        }
    }
    for table in &forced {
        statements.push(format!("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY", table.sql()));
    }
    for fk in &to_convert {
        statements.push(fk.add_composite_sql()?);
        changes.push(format!(
            "foreign key {} of {} now references {} by (tenant_id, {})",
            fk.name,
            fk.table.display(),
            fk.parent.display(),
            fk.parent_columns.join(", ")
        ));
    }
    for table in &forced {
        statements.push(format!("ALTER TABLE {} FORCE ROW LEVEL SECURITY", table.sql()));
    }
    // The tables these statements change are the extension's while they run (see guard::Busy);
    // the enabled ones no outer caller is building are checked again afterwards (`rel` is
    // checked by whoever is building it).
    let mut partners: Vec<&Relation> = Vec::new();
    for table in to_convert.iter().flat_map(|fk| [&fk.table, &fk.parent]) {
        if table.oid != rel.oid
            && enabled.contains(&table.oid)
            && !busy::ours(table.oid)
            && !partners.iter().any(|t| t.oid == table.oid)
        {
            partners.push(table);
        }
    }
    let mut tables = vec![rel.oid];
    tables.extend(to_convert.iter().flat_map(|fk| [fk.table.oid, fk.parent.oid]));
    {
        let _busy = busy::Busy::enter(&tables);
        for statement in &statements {
            Spi::run(statement).ctx("hardening: DDL")?;
        }
    }
    for partner in partners {
        recheck("tenant_enable", partner, enabled)?;
    }
    if !changes.is_empty() {
        notice(format!("hardened {}: {}", rel.display(), changes.join("; ")));
    }
    Ok(changes)
}

/// After the extension's own DDL on an enabled table — during which the owner's code (index
/// expressions, check constraints, triggers) may have run while the guard left the table to the
/// extension — the table must still be exactly the protected shape, keys and grants included.
/// Whoever makes a table busy (`crate::tables::busy`) checks it with this when its DDL is done.
pub fn recheck(command: &str, rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    if let Some(deviation) = spec::inspect(rel)?.first() {
        return Err(refusal(command, rel, deviation));
    }
    let weak = weaknesses(rel, enabled)?;
    if let Some(weakness) = weak.iter().find(|w| !matches!(w, Weakness::GlobalReference(_))) {
        return Err(MtError::GuardWeakens {
            command: command.into(),
            table: rel.display(),
            what: weakness.describe(),
            fix: None,
        });
    }
    Ok(())
}

/// The guard's refusal of a command that leaves `rel` with `deviation`.
pub fn refusal(command: &str, rel: &Relation, deviation: &spec::Deviation) -> MtError {
    MtError::GuardWeakens {
        command: command.into(),
        table: rel.display(),
        what: deviation.describe(),
        fix: deviation.fix(&rel.sql()),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn oid(name: &str) -> pg_sys::Oid {
        Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{name}'::regclass::oid")).unwrap().unwrap()
    }

    fn constraints(table: &str) -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                &format!(
                    "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = '{table}'::regclass ORDER BY conname"
                ),
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        })
    }

    /// The child's action, and how it comes out of the composite rebuild.
    #[cfg(not(feature = "pg14"))]
    const ON_DELETE: &str = "SET NULL";
    #[cfg(not(feature = "pg14"))]
    const ON_DELETE_KEPT: &str = "SET NULL (parent_id)";
    #[cfg(feature = "pg14")]
    const ON_DELETE: &str = "CASCADE";
    #[cfg(feature = "pg14")]
    const ON_DELETE_KEPT: &str = "CASCADE";

    /// PostgreSQL 14 cannot keep tenant_id out of ON DELETE SET NULL: refused, with the reason.
    #[cfg(feature = "pg14")]
    #[pg_test]
    fn on_delete_set_null_cannot_be_made_per_tenant_on_14() {
        Spi::run(
            "SET LOCAL multitenancy.ddl_guard = off;
             CREATE TABLE h14_parent (id int PRIMARY KEY);
             CREATE TABLE h14_child (id int PRIMARY KEY, parent_id int REFERENCES h14_parent (id) ON DELETE SET NULL);",
        )
        .unwrap();
        crate::tables::enable::enable(oid("h14_child"), None).unwrap();
        match crate::tables::enable::enable(oid("h14_parent"), None) {
            Err(MtError::CannotHarden { reason, .. }) => assert!(reason.contains("PostgreSQL 14"), "{reason}"),
            other => panic!("expected CannotHarden, got {other:?}"),
        }
    }

    #[pg_test]
    fn enable_hardens_keys_foreign_keys_and_grants() {
        Spi::run(
            &"SET LOCAL multitenancy.ddl_guard = off;
             CREATE ROLE hardening_app;
             CREATE TABLE h_parent (id int PRIMARY KEY, email text UNIQUE, code text);
             CREATE UNIQUE INDEX h_parent_code ON h_parent (lower(code)) WHERE code IS NOT NULL;
             CREATE TABLE h_child (id int PRIMARY KEY, parent_id int REFERENCES h_parent (id) ON DELETE {ON_DELETE});
             GRANT ALL ON h_parent TO hardening_app;"
                .replace("{ON_DELETE}", ON_DELETE),
        )
        .unwrap();
        crate::tables::enable::enable(oid("h_child"), None).unwrap();
        // The child was enabled first: its FK to a not-yet-enabled parent stays global.
        assert!(constraints("h_child").iter().any(|c| c.contains("FOREIGN KEY (parent_id) REFERENCES h_parent(id)")));
        crate::tables::enable::enable(oid("h_parent"), None).unwrap();
        let parent = constraints("h_parent");
        assert!(parent.contains(&"h_parent_email_key UNIQUE (tenant_id, email)".to_string()), "{parent:?}");
        assert!(parent.iter().any(|c| c.ends_with("UNIQUE (tenant_id, id)")), "{parent:?}");
        assert!(parent.contains(&"h_parent_pkey PRIMARY KEY (id)".to_string()), "the primary key stays: {parent:?}");
        let index = Spi::get_one::<String>("SELECT pg_get_indexdef('h_parent_code'::regclass)").unwrap().unwrap();
        assert_eq!(
            index,
            "CREATE UNIQUE INDEX h_parent_code ON public.h_parent USING btree (tenant_id, lower(code)) WHERE (code IS NOT NULL)"
        );
        let child = constraints("h_child");
        assert!(
            child.contains(
                &format!("h_child_parent_id_fkey FOREIGN KEY (tenant_id, parent_id) REFERENCES h_parent(tenant_id, id) ON DELETE {ON_DELETE_KEPT}")
            ),
            "{child:?}"
        );
        let unsafe_grants = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'h_parent'::regclass \
             AND a.grantee = 'hardening_app'::regrole AND a.privilege_type IN ('TRUNCATE', 'TRIGGER', 'REFERENCES')",
        )
        .unwrap();
        assert_eq!(unsafe_grants, Some(0));
        let enabled = registry::enabled_set().unwrap();
        for table in ["h_parent", "h_child"] {
            let left = weaknesses(&Relation::lookup(oid(table)).unwrap(), &enabled).unwrap();
            assert!(left.is_empty(), "{table}: {left:?}");
        }
    }

    #[pg_test]
    fn a_unique_key_used_by_a_global_table_is_not_rebuilt() {
        Spi::run(
            "SET LOCAL multitenancy.ddl_guard = off;
             CREATE TABLE h_users (id int PRIMARY KEY, email text UNIQUE);
             CREATE TABLE h_global (email text REFERENCES h_users (email));",
        )
        .unwrap();
        match crate::tables::enable::enable(oid("h_users"), None) {
            Err(MtError::CannotHarden { object, .. }) => assert!(object.contains("h_global_email_fkey"), "{object}"),
            other => panic!("expected CannotHarden, got {other:?}"),
        }
    }
}
