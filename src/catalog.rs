//! Small catalog helpers: the `regclass` argument type and what we need to know of a relation.
use crate::error::{MtError, NoRowIsNone, SpiContext};
// Not imported as `Result`: pgrx's `impl_sql_translatable!` below means std's.
use crate::error::Result as MtResult;
use pgrx::prelude::*;
use pgrx::spi::quote_qualified_identifier;
use std::collections::HashSet;
use std::ffi::CStr;

/// A `regclass` argument. PostgreSQL resolves the name (with the caller's search_path) before
/// the function runs, so an unknown table fails with 42P01 before anything happens.
#[derive(Copy, Clone, Debug)]
pub struct Regclass(pub pg_sys::Oid);

impl FromDatum for Regclass {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null {
            None
        } else {
            // SAFETY: a regclass datum is an oid.
            unsafe { pg_sys::Oid::from_datum(datum, false) }.map(Regclass)
        }
    }
}

impl IntoDatum for Regclass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

pgrx::impl_sql_translatable!(Regclass, "regclass");

// SAFETY: a regclass argument is a by-value oid datum, unboxed through `FromDatum` above.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for Regclass {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller guarantees the argument is a non-null regclass.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

/// What the extension needs to know of a relation to protect it.
#[derive(Clone, Debug)]
pub struct Relation {
    pub oid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    pub kind: u8,
}

impl Relation {
    pub fn lookup(oid: pg_sys::Oid) -> MtResult<Relation> {
        // SAFETY: lsyscache lookups return NULL (or '\0' for relkind) when the relation is gone.
        unsafe {
            let name = pg_sys::get_rel_name(oid);
            if name.is_null() {
                return Err(MtError::NoSuchRelation { oid: oid.to_u32() });
            }
            let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
            Ok(Relation {
                oid,
                name: CStr::from_ptr(name).to_string_lossy().into_owned(),
                schema: if schema.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(schema).to_string_lossy().into_owned()
                },
                kind: pg_sys::get_rel_relkind(oid) as u8,
            })
        }
    }

    /// `schema.table`, quoted where needed: safe to put into DDL.
    pub fn sql(&self) -> String {
        quote_qualified_identifier(&self.schema, &self.name)
    }

    /// `schema.table` for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn is_table(&self) -> bool {
        self.kind == pg_sys::RELKIND_RELATION || self.kind == pg_sys::RELKIND_PARTITIONED_TABLE
    }

    /// The relation kind as a phrase for error messages ("a view").
    pub fn kind_phrase(&self) -> &'static str {
        match self.kind {
            pg_sys::RELKIND_RELATION => "a table",
            pg_sys::RELKIND_PARTITIONED_TABLE => "a partitioned table",
            pg_sys::RELKIND_VIEW => "a view",
            pg_sys::RELKIND_MATVIEW => "a materialized view",
            pg_sys::RELKIND_FOREIGN_TABLE => "a foreign table",
            pg_sys::RELKIND_SEQUENCE => "a sequence",
            pg_sys::RELKIND_INDEX | pg_sys::RELKIND_PARTITIONED_INDEX => "an index",
            pg_sys::RELKIND_COMPOSITE_TYPE => "a composite type",
            pg_sys::RELKIND_TOASTVALUE => "a TOAST table",
            _ => "not a table",
        }
    }
}

/// The first column of every row of a query that returns oids (NULLs skipped).
pub fn oid_column(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> MtResult<Vec<pg_sys::Oid>> {
    Spi::connect(|client| {
        let rows = client.select(sql, None, args).ctx("catalog::oid_column")?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(oid) = row.get::<pg_sys::Oid>(1).ctx("catalog::oid_column value")? {
                out.push(oid);
            }
        }
        Ok(out)
    })
}

/// Schemas whose tables are never tenant data.
pub fn is_reserved_schema(schema: &str) -> bool {
    matches!(schema, "multitenancy" | "pg_catalog" | "information_schema" | "pg_toast")
        || schema.starts_with("pg_temp_")
        || schema.starts_with("pg_toast_temp_")
}

// ---------------------------------------------------------------------------------------------
// What reads what: inheritance, views, publications (the guard refuses, verify() reports and
// tenant_enable warns from the same reads).

/// Children (partitions, inheritance children) of a table.
pub fn children(relid: pg_sys::Oid) -> MtResult<Vec<pg_sys::Oid>> {
    oid_column("SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = $1 ORDER BY inhrelid", &[relid.into()])
}

pub fn is_partition(relid: pg_sys::Oid) -> MtResult<bool> {
    Spi::get_one_with_args::<bool>("SELECT relispartition FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])
        .ctx("guard::is_partition")
        .map(|p| p.unwrap_or(false))
}

/// The tables a view or materialized view reads, through any depth of views.
pub fn tables_read_by(relid: pg_sys::Oid) -> MtResult<Vec<pg_sys::Oid>> {
    oid_column(
        "WITH RECURSIVE reads(relid) AS ( \
                     SELECT d.refobjid FROM pg_catalog.pg_rewrite w \
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      WHERE w.ev_class = $1 AND d.refobjid <> $1 \
                   UNION \
                     SELECT d.refobjid FROM reads r \
                       JOIN pg_catalog.pg_class v ON v.oid = r.relid AND v.relkind IN ('v', 'm') \
                       JOIN pg_catalog.pg_rewrite w ON w.ev_class = v.oid \
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      WHERE d.refobjid <> v.oid) \
                 SELECT DISTINCT relid FROM reads ORDER BY relid",
        &[relid.into()],
    )
}

pub fn first_enabled(tables: Vec<pg_sys::Oid>, enabled: &HashSet<pg_sys::Oid>) -> MtResult<Option<Relation>> {
    match tables.into_iter().find(|t| enabled.contains(t)) {
        Some(t) => Relation::lookup(t).map(Some),
        None => Ok(None),
    }
}

/// Whether a view applies row level security as the querying role. Before PostgreSQL 15 there is
/// no `security_invoker`: a view then reads as its owner, which row level security (forced on
/// enabled tables) still filters unless the owner is a superuser or has BYPASSRLS.
pub fn view_is_safe(view: pg_sys::Oid) -> MtResult<bool> {
    #[cfg(not(feature = "pg14"))]
    const SQL: &str = "SELECT COALESCE((SELECT o.option_value::bool \
           FROM pg_catalog.pg_options_to_table(c.reloptions) o WHERE o.option_name = 'security_invoker'), false) \
           FROM pg_catalog.pg_class c WHERE c.oid = $1";
    #[cfg(feature = "pg14")]
    const SQL: &str = "SELECT NOT (r.rolsuper OR r.rolbypassrls) FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $1";
    Spi::get_one_with_args::<bool>(SQL, &[view.into()]).ctx("guard::view_is_safe").map(|s| s.unwrap_or(false))
}

/// The enabled table a leaky view reads, if it is one.
pub fn leaky_view(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> MtResult<Option<Relation>> {
    if view_is_safe(view)? {
        return Ok(None);
    }
    first_enabled(tables_read_by(view)?, enabled)
}

/// Why a materialized view would store tenant rows outside row level security.
pub enum MatviewLeak {
    /// It reads a tenant-enabled table.
    Table(Relation),
    /// It calls a function that may read one (its rows depend on whose context refreshes it).
    Function(String),
}

/// Whether a materialized view (through any views it reads) reads a tenant-enabled table or
/// calls a function that could: directly, or as the code of an operator, a cast or an aggregate. Functions in SQL or a procedural language count (what they
/// read cannot be known from the catalog); built-in and C functions do not (a superuser
/// installed them; C code that reads tables is trusted like the extension that brings it).
pub fn matview_leak(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> MtResult<Option<MatviewLeak>> {
    if let Some(table) = first_enabled(tables_read_by(view)?, enabled)? {
        return Ok(Some(MatviewLeak::Table(table)));
    }
    let function = Spi::get_one_with_args::<String>(
        "WITH RECURSIVE reads(relid) AS ( \
             SELECT $1::pg_catalog.oid \
           UNION \
             SELECT d.refobjid FROM reads r \
               JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.relid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               JOIN pg_catalog.pg_class v ON v.oid = d.refobjid AND v.relkind IN ('v', 'm') \
              WHERE d.refobjid <> r.relid), \
         deps AS ( \
             SELECT d.refclassid, d.refobjid FROM reads r \
               JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.relid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid = w.oid), \
         called(oid) AS ( \
             SELECT refobjid FROM deps WHERE refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
           UNION SELECT o.oprcode::pg_catalog.oid FROM deps JOIN pg_catalog.pg_operator o ON o.oid = deps.refobjid \
                  WHERE deps.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
           UNION SELECT c.castfunc FROM deps JOIN pg_catalog.pg_cast c ON c.oid = deps.refobjid \
                  WHERE deps.refclassid = 'pg_catalog.pg_cast'::pg_catalog.regclass), \
         functions(oid) AS ( \
             SELECT oid FROM called \
           UNION SELECT f FROM called JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = called.oid \
                  CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, \
                        a.aggserialfn, a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::pg_catalog.oid[]) f) \
         SELECT p.oid::pg_catalog.regprocedure::text FROM functions fn \
           JOIN pg_catalog.pg_proc p ON p.oid = fn.oid \
           JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
          WHERE l.lanname NOT IN ('internal', 'c') \
            AND p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace) \
          ORDER BY 1 LIMIT 1",
        &[view.into()],
    )
    .no_row_is_none()
    .ctx("guard::matview functions")?;
    Ok(function.map(MatviewLeak::Function))
}

/// Enabled tables a publication publishes, with the publication's name.
pub fn published_tables(publication: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> MtResult<(String, Vec<Relation>)> {
    let (name, tables) = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT p.pubname::text, c.oid FROM pg_catalog.pg_publication p \
                   JOIN pg_catalog.pg_publication_tables t ON t.pubname = p.pubname \
                   JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
                   JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
                  WHERE p.oid = $1 ORDER BY c.oid",
                None,
                &[publication.into()],
            )
            .ctx("guard::published_tables")?;
        let mut name = String::new();
        let mut tables = Vec::new();
        for row in rows {
            name = row.get::<String>(1).ctx("pubname")?.unwrap_or_default();
            tables.push(row.get::<pg_sys::Oid>(2).ctx("table")?.unwrap_or_default());
        }
        Ok::<_, MtError>((name, tables))
    })?;
    let tables = tables.into_iter().filter(|t| enabled.contains(t)).map(Relation::lookup).collect::<MtResult<_>>()?;
    Ok((name, tables))
}

/// The primary key of a table: its constraint name and its columns, in key order.
pub fn primary_key(relid: pg_sys::Oid) -> MtResult<Option<(String, Vec<String>)>> {
    let row = Spi::get_one_with_args::<Vec<String>>(
        "SELECT ARRAY[c.conname::text] || pg_catalog.array_agg(a.attname::text ORDER BY k.n) \
           FROM pg_catalog.pg_constraint c \
          CROSS JOIN LATERAL pg_catalog.unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
          WHERE c.conrelid = $1 AND c.contype = 'p' GROUP BY c.conname",
        &[relid.into()],
    )
    .no_row_is_none()
    .ctx("catalog::primary_key")?;
    Ok(row.filter(|names| !names.is_empty()).map(|mut names| (names.remove(0), names)))
}

/// The attributes of a tuple descriptor, in order (PostgreSQL 18 keeps them behind an accessor).
///
/// # Safety
/// `tupdesc` is a valid tuple descriptor that outlives the iteration.
pub unsafe fn attributes<'a>(tupdesc: pg_sys::TupleDesc) -> impl Iterator<Item = &'a pg_sys::FormData_pg_attribute> {
    (0..(*tupdesc).natts).map(move |i| attribute(tupdesc, i))
}

/// # Safety
/// As [`attributes`]; `i` is below `natts`.
#[cfg(feature = "pg18")]
unsafe fn attribute<'a>(tupdesc: pg_sys::TupleDesc, i: i32) -> &'a pg_sys::FormData_pg_attribute {
    &*pg_sys::TupleDescAttr(tupdesc, i)
}

/// # Safety
/// As [`attributes`]; `i` is below `natts`.
#[cfg(not(feature = "pg18"))]
unsafe fn attribute<'a>(tupdesc: pg_sys::TupleDesc, i: i32) -> &'a pg_sys::FormData_pg_attribute {
    &(*tupdesc).attrs.as_slice((*tupdesc).natts as usize)[i as usize]
}

/// The function-manager record of a version-1 C function (`pg_finfo_<name>`), for the
/// extension's own C entry points (trigger functions and `row_bytes`).
pub const FINFO_V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

/// The trigger data of a call, or an error when the function was not called as a trigger (a
/// trigger function called directly, `SELECT multitenancy._usage_row()`).
///
/// # Safety
/// `fcinfo` is the call info of a function PostgreSQL calls.
pub unsafe fn trigger_data<'a>(fcinfo: pg_sys::FunctionCallInfo, name: &'static str) -> &'a pg_sys::TriggerData {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
        MtError::InvalidArgument {
            message: format!("multitenancy.{name}() can only be called as a trigger"),
            hint: "The extension creates the triggers that call it (tenant_enable(), CREATE EXTENSION).".into(),
        }
        .raise()
    }
    &*(context as *const pg_sys::TriggerData)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn relations_are_described_and_quoted() {
        Spi::run(r#"CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."My Table" (id int)"#).unwrap();
        let oid = Spi::get_one::<pg_sys::Oid>(r#"SELECT '"Odd Schema"."My Table"'::regclass::oid"#).unwrap().unwrap();
        let rel = Relation::lookup(oid).unwrap();
        assert_eq!(rel.display(), "Odd Schema.My Table");
        assert_eq!(rel.sql(), r#""Odd Schema"."My Table""#);
        assert!(rel.is_table());
        Spi::run(r#"CREATE VIEW v AS SELECT 1"#).unwrap();
        let view =
            Relation::lookup(Spi::get_one::<pg_sys::Oid>("SELECT 'v'::regclass::oid").unwrap().unwrap()).unwrap();
        assert!(!view.is_table());
        assert_eq!(view.kind_phrase(), "a view");
    }

    #[pg_test]
    fn reserved_schemas() {
        for schema in ["multitenancy", "pg_catalog", "information_schema", "pg_toast", "pg_temp_3", "pg_toast_temp_3"] {
            assert!(is_reserved_schema(schema), "{schema}");
        }
        for schema in ["public", "app", "pg_tempo"] {
            assert!(!is_reserved_schema(schema), "{schema}");
        }
    }
}

/// The elements of a pointer list (a parse tree's).
///
/// # Safety
/// `list` is NULL or a valid pointer list.
pub unsafe fn elements(list: *mut pg_sys::List) -> Vec<*mut std::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).ptr_value).collect()
}

/// The text of a String node (a name in a parse tree's name list).
///
/// # Safety
/// `node` is a String node.
#[cfg(feature = "pg14")]
pub unsafe fn string_value<'a>(node: *mut std::ffi::c_void) -> &'a std::ffi::CStr {
    std::ffi::CStr::from_ptr((*(node as *mut pg_sys::Value)).val.str_)
}

/// # Safety
/// `node` is a String node.
#[cfg(not(feature = "pg14"))]
pub unsafe fn string_value<'a>(node: *mut std::ffi::c_void) -> &'a std::ffi::CStr {
    std::ffi::CStr::from_ptr((*(node as *mut pg_sys::String)).sval)
}

/// The oid of function `multitenancy.<name>(<args>)`, if it exists (a syscache lookup by name;
/// no permission check). For the hooks and triggers that need to know which SQL the database has.
pub fn extension_function(name: &CStr, args: &[pg_sys::Oid]) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by name in a transaction; the name list is built of palloc'd
    // strings as LookupFuncName expects, and `args` outlives the call.
    let oid = unsafe {
        let names = pg_sys::list_make2_impl(
            pg_sys::NodeTag::T_List,
            pg_sys::ListCell { ptr_value: pg_sys::makeString(pg_sys::pstrdup(c"multitenancy".as_ptr())).cast() },
            pg_sys::ListCell { ptr_value: pg_sys::makeString(pg_sys::pstrdup(name.as_ptr())).cast() },
        );
        let none = pg_sys::InvalidOid;
        let argtypes = if args.is_empty() { &none as *const pg_sys::Oid } else { args.as_ptr() };
        pg_sys::LookupFuncName(names, args.len() as i32, argtypes, true)
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The relation a RangeVar names, resolved as the statement will resolve it (`None`: none).
///
/// # Safety
/// `rv` is NULL or a valid RangeVar.
pub unsafe fn relid_of(rv: *mut pg_sys::RangeVar) -> Option<pg_sys::Oid> {
    if rv.is_null() {
        return None;
    }
    let oid = pg_sys::RangeVarGetRelidExtended(
        rv,
        pg_sys::NoLock as i32,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    );
    (oid != pg_sys::InvalidOid).then_some(oid)
}
