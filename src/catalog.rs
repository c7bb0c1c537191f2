//! Small catalog helpers: the `regclass` argument type and what we need to know of a relation.
use crate::error::MtError;
use pgrx::prelude::*;
use pgrx::spi::quote_qualified_identifier;
use std::ffi::CStr;

/// A `regclass` argument. PostgreSQL resolves the name (with the caller's search_path) before
/// the function runs, so an unknown table fails with 42P01 before anything happens.
#[derive(Copy, Clone, Debug)]
pub struct Regclass(pub pg_sys::Oid);

impl FromDatum for Regclass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
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
    pub fn lookup(oid: pg_sys::Oid) -> crate::error::Result<Relation> {
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
pub fn oid_column(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> crate::error::Result<Vec<pg_sys::Oid>> {
    use crate::error::SpiContext;
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
        let view = Relation::lookup(Spi::get_one::<pg_sys::Oid>("SELECT 'v'::regclass::oid").unwrap().unwrap()).unwrap();
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
