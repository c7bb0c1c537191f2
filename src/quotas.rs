//! Quotas and usage: exact per-tenant counters of rows and bytes in tenant-enabled tables,
//! limits from plans and per-tenant overrides, metered counters.
//!
//! Counting: every tenant-enabled table has two triggers (declared in [`crate::spec`], so the
//! guard and `verify()` keep them there). An AFTER ROW trigger adds each written row's tenant,
//! table and size to a per-backend list of pending changes — no SQL per row. An AFTER STATEMENT
//! trigger then applies the list: per tenant, one UPDATE of its `tenant_usage` row (which every
//! write of the tenant locks first, so writers of one tenant queue there and writers of other
//! tenants never meet) and one of each `table_usage` row, then compares the new totals with the
//! tenant's limits. A statement that would pass a limit fails with 53400 and, being one
//! statement, changes nothing; a rolled-back transaction takes its counter updates with it.
//! Whatever a statement trigger has not applied (rows written by a command that fires no
//! statement trigger) is applied before commit.
//!
//! A row's size is [`row_bytes`]: the uncompressed sizes of its non-null values — the same for
//! a row whatever its storage (compressed, out of line), so the counter can be recomputed from
//! the table exactly (`usage_recompute`).
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::registry;
use crate::tenants;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// The keys the extension counts itself; any other key is a metered counter.
pub fn is_metered(key: &str) -> bool {
    !matches!(key, "members" | "rows" | "bytes") && !key.starts_with("rows:")
}

/// The limits of one tenant that the counting triggers enforce (`None`: unlimited).
#[derive(Clone, Default)]
struct Limits {
    rows: Option<i64>,
    bytes: Option<i64>,
    /// `rows:<table>`: the table (and its partitions / children) and its limit.
    tables: Vec<(pg_sys::Oid, i64)>,
}

thread_local! {
    /// Row changes counted by the row trigger and not yet applied: (tenant, table oid) -> (rows,
    /// bytes).
    static PENDING: RefCell<BTreeMap<([u8; 16], u32), (i64, i64)>> = const { RefCell::new(BTreeMap::new()) };
    /// Limits per tenant, valid for one registry generation (plans and quotas changes bump it).
    static LIMITS: RefCell<(u64, HashMap<[u8; 16], Limits>)> = RefCell::new((u64::MAX, HashMap::new()));
    /// The counter updates, prepared once per session.
    static PLANS: RefCell<[Option<OwnedPreparedStatement>; 2]> = const { RefCell::new([None, None]) };
}

/// Forget pending changes of an aborted (sub)transaction: its rows are gone with it.
pub fn transaction_aborted() {
    PENDING.with(|p| p.borrow_mut().clear());
}

/// Apply what is pending before the transaction commits (see the module comment).
pub fn before_commit() -> Result<()> {
    flush()
}

// ---------------------------------------------------------------------------------------------
// Row sizes

/// The uncompressed size of a non-null value of an attribute.
///
/// # Safety
/// `attr` describes `value`, which is a valid datum of that attribute.
unsafe fn value_bytes(attr: &pg_sys::FormData_pg_attribute, value: pg_sys::Datum) -> i64 {
    match attr.attlen {
        -1 => pg_sys::toast_raw_datum_size(value) as i64,
        -2 => std::ffi::CStr::from_ptr(value.cast_mut_ptr::<std::ffi::c_char>()).to_bytes().len() as i64 + 1,
        n => n as i64,
    }
}

/// Size of a deformed row: the sum of [`value_bytes`] over the non-null, non-dropped values.
///
/// # Safety
/// `values` and `nulls` hold `tupdesc.natts` entries deformed with `tupdesc`.
unsafe fn deformed_bytes(tupdesc: pg_sys::TupleDesc, values: *const pg_sys::Datum, nulls: *const bool) -> i64 {
    let natts = (*tupdesc).natts as usize;
    let attrs = (*tupdesc).attrs.as_slice(natts);
    let mut total = 0;
    for (i, attr) in attrs.iter().enumerate() {
        if attr.attisdropped || *nulls.add(i) {
            continue;
        }
        total += value_bytes(attr, *values.add(i));
    }
    total
}

/// The attribute number (0-based) of the tenant column in a tuple descriptor.
///
/// # Safety
/// `tupdesc` is a valid tuple descriptor.
unsafe fn tenant_attno(tupdesc: pg_sys::TupleDesc) -> Option<usize> {
    let natts = (*tupdesc).natts as usize;
    (*tupdesc).attrs.as_slice(natts).iter().position(|attr| {
        !attr.attisdropped
            && std::ffi::CStr::from_ptr(attr.attname.data.as_ptr()).to_bytes() == crate::spec::TENANT_COLUMN.as_bytes()
    })
}

/// The tenant and size of the row in a trigger slot (`None`: no tenant, not counted).
///
/// # Safety
/// `slot` is a valid slot holding a row of the trigger's relation.
unsafe fn slot_row(slot: *mut pg_sys::TupleTableSlot) -> Option<([u8; 16], i64)> {
    pg_sys::slot_getallattrs(slot);
    let tupdesc = (*slot).tts_tupleDescriptor;
    let attno = tenant_attno(tupdesc)?;
    if *(*slot).tts_isnull.add(attno) {
        return None;
    }
    let uuid = (*(*slot).tts_values.add(attno)).cast_mut_ptr::<[u8; 16]>();
    Some((*uuid, deformed_bytes(tupdesc, (*slot).tts_values, (*slot).tts_isnull)))
}

const FINFO_V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

/// `multitenancy.row_bytes(record)`: the size a row counts for in the `bytes` quota.
#[no_mangle]
pub extern "C" fn pg_finfo_mt_row_bytes() -> &'static pg_sys::Pg_finfo_record {
    &FINFO_V1
}

/// # Safety
/// Called by PostgreSQL through the fmgr with one non-null composite argument (STRICT).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn mt_row_bytes(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let arg = (*fcinfo).args.as_slice(1)[0].value;
    let header = pg_sys::pg_detoast_datum(arg.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
    let type_id = pgrx::heap_tuple_header_get_type_id(header);
    let typmod = pgrx::heap_tuple_header_get_typmod(header);
    let tupdesc = pg_sys::lookup_rowtype_tupdesc(type_id, typmod);
    let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
    tuple.t_len = pgrx::varsize(header as *const pg_sys::varlena) as u32;
    tuple.t_data = header;
    let natts = (*tupdesc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0); natts];
    let mut nulls = vec![true; natts];
    pg_sys::heap_deform_tuple(&mut tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    let bytes = deformed_bytes(tupdesc, values.as_ptr(), nulls.as_ptr());
    pg_sys::DecrTupleDescRefCount(tupdesc);
    pg_sys::Datum::from(bytes)
}

// ---------------------------------------------------------------------------------------------
// The counting triggers

/// `multitenancy._usage_row()`: AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW.
#[no_mangle]
pub extern "C" fn pg_finfo_mt_usage_row() -> &'static pg_sys::Pg_finfo_record {
    &FINFO_V1
}

/// # Safety
/// Called by PostgreSQL as a row trigger.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn mt_usage_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let data = trigger_data(fcinfo, "_usage_row");
    let event = data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let table = (*data.tg_relation).rd_id;
    let add = |slot: *mut pg_sys::TupleTableSlot, sign: i64| {
        if slot.is_null() {
            return;
        }
        if let Some((tenant, bytes)) = slot_row(slot) {
            PENDING.with(|p| {
                let mut pending = p.borrow_mut();
                let entry = pending.entry((tenant, table.to_u32())).or_insert((0, 0));
                entry.0 += sign;
                entry.1 += sign * bytes;
            });
        }
    };
    match event {
        pg_sys::TRIGGER_EVENT_INSERT => add(data.tg_trigslot, 1),
        pg_sys::TRIGGER_EVENT_DELETE => add(data.tg_trigslot, -1),
        pg_sys::TRIGGER_EVENT_UPDATE => {
            add(data.tg_trigslot, -1);
            add(data.tg_newslot, 1);
        }
        _ => {}
    }
    pg_sys::Datum::from(0)
}

/// `multitenancy._usage_statement()`: AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE, FOR EACH
/// STATEMENT.
#[no_mangle]
pub extern "C" fn pg_finfo_mt_usage_statement() -> &'static pg_sys::Pg_finfo_record {
    &FINFO_V1
}

/// # Safety
/// Called by PostgreSQL as a statement trigger.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn mt_usage_statement(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let data = trigger_data(fcinfo, "_usage_statement");
    if data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_TRUNCATE {
        // TRUNCATE fires this for every table it empties (partitions included).
        forget((*data.tg_relation).rd_id).or_raise();
    }
    flush().or_raise();
    pg_sys::Datum::from(0)
}

/// # Safety
/// `fcinfo` is the call info of a function PostgreSQL calls.
unsafe fn trigger_data<'a>(fcinfo: pg_sys::FunctionCallInfo, name: &'static str) -> &'a pg_sys::TriggerData {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
        MtError::InvalidArgument {
            message: format!("multitenancy.{name}() can only be called as a trigger"),
            hint: "tenant_enable() installs it on tenant-enabled tables.".into(),
        }
        .raise()
    }
    &*(context as *const pg_sys::TriggerData)
}

// ---------------------------------------------------------------------------------------------
// Applying counts and checking limits

const UPDATE_TENANT: &str = "\
    INSERT INTO multitenancy.tenant_usage AS u (tenant_id, row_count, byte_count) VALUES ($1, $2, $3) \
    ON CONFLICT (tenant_id) DO UPDATE \
       SET row_count = u.row_count + EXCLUDED.row_count, byte_count = u.byte_count + EXCLUDED.byte_count \
    RETURNING u.row_count, u.byte_count";
const UPDATE_TABLE: &str = "\
    INSERT INTO multitenancy.table_usage AS u (tenant_id, relid, row_count, byte_count) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (tenant_id, relid) DO UPDATE \
       SET row_count = u.row_count + EXCLUDED.row_count, byte_count = u.byte_count + EXCLUDED.byte_count";

/// Run one of the kept counter statements (as the registry owner, inside `Spi::connect`).
fn run_kept(
    client: &mut pgrx::spi::SpiClient<'_>,
    index: usize,
    sql: &str,
    types: &[PgBuiltInOids],
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<(i64, i64)>> {
    if PLANS.with(|p| p.borrow()[index].is_none()) {
        let types: Vec<PgOid> = types.iter().map(|t| PgOid::BuiltIn(*t)).collect();
        let prepared = client.prepare_mut(sql, &types).ctx("quotas: prepare")?.keep();
        PLANS.with(|p| p.borrow_mut()[index] = Some(prepared));
    }
    PLANS.with(|p| {
        let plans = p.borrow();
        let statement = plans[index].as_ref().expect("prepared above");
        let rows = client.update(statement, None, args).ctx("quotas: count")?;
        match rows.into_iter().next() {
            Some(row) => Ok(Some((
                row.get::<i64>(1).ctx("quotas: rows")?.unwrap_or(0),
                row.get::<i64>(2).ctx("quotas: bytes")?.unwrap_or(0),
            ))),
            None => Ok(None),
        }
    })
}

/// Apply the pending row changes to the counters and enforce the limits.
fn flush() -> Result<()> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return Ok(());
    }
    // Per tenant, in uuid order: a statement writing several tenants (admin mode) takes their
    // locks in one order, as every other statement does.
    let mut by_tenant: BTreeMap<[u8; 16], Vec<(pg_sys::Oid, i64, i64)>> = BTreeMap::new();
    for ((tenant, table), (rows, bytes)) in pending {
        if rows != 0 || bytes != 0 {
            by_tenant.entry(tenant).or_default().push((pg_sys::Oid::from(table), rows, bytes));
        }
    }
    for (tenant, tables) in by_tenant {
        let id = pgrx::Uuid::from_bytes(tenant);
        let rows: i64 = tables.iter().map(|t| t.1).sum();
        let bytes: i64 = tables.iter().map(|t| t.2).sum();
        let (total_rows, total_bytes) = registry::as_owner(|| {
            Spi::connect_mut(|client| {
                let totals = run_kept(
                    client,
                    0,
                    UPDATE_TENANT,
                    &[PgBuiltInOids::UUIDOID, PgBuiltInOids::INT8OID, PgBuiltInOids::INT8OID],
                    &[id.into(), rows.into(), bytes.into()],
                )?
                .ok_or_else(|| MtError::internal("quotas::flush", "no tenant_usage row returned"))?;
                for &(table, table_rows, table_bytes) in &tables {
                    run_kept(
                        client,
                        1,
                        UPDATE_TABLE,
                        &[PgBuiltInOids::UUIDOID, PgBuiltInOids::OIDOID, PgBuiltInOids::INT8OID, PgBuiltInOids::INT8OID],
                        &[id.into(), table.into(), table_rows.into(), table_bytes.into()],
                    )?;
                }
                Ok(totals)
            })
        })?;
        if rows <= 0 && bytes <= 0 {
            continue;
        }
        let limits = limits_of(id)?;
        if let Some(quota) = limits.rows.filter(|q| rows > 0 && total_rows > *q) {
            return Err(exceeded(id, "rows", total_rows - rows, rows, quota));
        }
        if let Some(quota) = limits.bytes.filter(|q| bytes > 0 && total_bytes > *q) {
            return Err(exceeded(id, "bytes", total_bytes - bytes, bytes, quota));
        }
        for (limited, quota) in limits.tables {
            check_table(id, limited, quota, &tables)?;
        }
    }
    Ok(())
}

/// Enforce a `rows:<table>` limit: the rows of the tenant in the table and everything under it.
fn check_table(tenant: pgrx::Uuid, limited: pg_sys::Oid, quota: i64, written: &[(pg_sys::Oid, i64, i64)]) -> Result<()> {
    let (subtree, used) = registry::as_owner(|| {
        Spi::connect(|client| {
            let row = client
                .select(
                    "SELECT array_agg(s.relid::oid), coalesce(sum(u.row_count), 0)::bigint \
                       FROM multitenancy._usage_tables($2) AS s(relid) \
                       LEFT JOIN multitenancy.table_usage u ON u.tenant_id = $1 AND u.relid = s.relid",
                    Some(1),
                    &[tenant.into(), limited.into()],
                )
                .ctx("quotas::check_table")?
                .first();
            Ok::<_, MtError>((
                row.get::<Vec<pg_sys::Oid>>(1).ctx("subtree")?.unwrap_or_default(),
                row.get::<i64>(2).ctx("used")?.unwrap_or(0),
            ))
        })
    })?;
    let added: i64 = written.iter().filter(|w| subtree.contains(&w.0)).map(|w| w.1).sum();
    if added > 0 && used > quota {
        // Qualified, as quota keys are stored.
        let key = registry::with_pinned_search_path(|| {
            Spi::get_one_with_args::<String>("SELECT 'rows:' || $1::regclass::text", &[limited.into()]).ctx("quotas: key")
        })?
        .unwrap_or_default();
        return Err(exceeded(tenant, &key, used - added, added, quota));
    }
    Ok(())
}

fn exceeded(tenant: pgrx::Uuid, key: &str, used: i64, adding: i64, quota: i64) -> MtError {
    let slug = tenants::lookup(tenants::Key::Id(tenant)).ok().flatten().map(|t| t.slug).unwrap_or_else(|| tenant.to_string());
    MtError::QuotaExceeded { tenant: slug, key: key.to_string(), used, adding, quota }
}

/// The limits the triggers enforce for a tenant, cached per registry generation.
fn limits_of(tenant: pgrx::Uuid) -> Result<Limits> {
    let generation = tenants::current_generation();
    let hit = LIMITS.with(|l| {
        let mut cache = l.borrow_mut();
        if cache.0 != generation {
            *cache = (generation, HashMap::new());
        }
        cache.1.get(tenant.as_bytes()).cloned()
    });
    if let Some(limits) = hit {
        return Ok(limits);
    }
    let limits = registry::as_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT key, quota, CASE WHEN key LIKE 'rows:%' THEN pg_catalog.to_regclass(substr(key, 6))::oid END \
                       FROM multitenancy._quotas($1) WHERE quota IS NOT NULL",
                    None,
                    &[tenant.into()],
                )
                .ctx("quotas::limits_of")?;
            let mut limits = Limits::default();
            for row in rows {
                let key = row.get::<String>(1).ctx("key")?.unwrap_or_default();
                let quota = row.get::<i64>(2).ctx("quota")?.unwrap_or(0);
                match key.as_str() {
                    "rows" => limits.rows = Some(quota),
                    "bytes" => limits.bytes = Some(quota),
                    _ => {
                        if let Some(table) = row.get::<pg_sys::Oid>(3).ctx("table")? {
                            limits.tables.push((table, quota));
                        }
                    }
                }
            }
            Ok::<_, MtError>(limits)
        })
    })?;
    // Kept only if no registry change arrived meanwhile.
    if tenants::current_generation() == generation {
        LIMITS.with(|l| {
            let mut cache = l.borrow_mut();
            if cache.0 == generation && cache.1.len() < 10_000 {
                cache.1.insert(*tenant.as_bytes(), limits.clone());
            }
        });
    }
    Ok(limits)
}

/// A table's counters leave with it (TRUNCATE, tenant_disable, DROP).
pub fn forget(table: pg_sys::Oid) -> Result<()> {
    registry::as_owner(|| Spi::run_with_args("SELECT multitenancy._usage_forget($1)", &[table.into()]).ctx("quotas::forget"))
}

/// Set a table's counters to what it holds (after tenant_enable installed the counting).
pub fn recount(table: pg_sys::Oid) -> Result<()> {
    registry::as_owner(|| {
        Spi::run_with_args("SELECT multitenancy._usage_recount($1)", &[table.into()]).ctx("quotas::recount")
    })
}

// ---------------------------------------------------------------------------------------------
// SQL functions

/// Raise the quota-exceeded error (for the SQL functions that enforce `members` and metered
/// limits, so that every quota error reads the same).
#[pg_extern(volatile, parallel_unsafe)]
fn _quota_exceeded(tenant: pgrx::Uuid, key: &str, used: i64, adding: i64, quota: i64) {
    exceeded(tenant, key, used, adding, quota).raise()
}

fn validate_key(key: Option<&str>) -> Result<String> {
    registry::as_owner(|| {
        Spi::get_one_with_args::<String>("SELECT multitenancy._quota_key($1)", &[key.unwrap_or_default().into()])
            .ctx("quotas::validate_key")
    })?
    .ok_or_else(|| MtError::internal("quotas::validate_key", "no key"))
}

/// Override a tenant's limit for `key` (NULL: unlimited). For DBAs (EXECUTE is revoked from
/// PUBLIC); audited.
#[pg_extern(volatile, parallel_unsafe)]
fn quota_set(tenant: Option<&str>, key: Option<&str>, quota: Option<i64>) {
    let run = || {
        if quota.is_some_and(|q| q < 0) {
            return Err(MtError::InvalidArgument {
                message: format!("a quota cannot be negative (got {})", quota.unwrap_or_default()),
                hint: "Pass 0 or more, or NULL for unlimited.".into(),
            });
        }
        let key = validate_key(key)?;
        let tenant = crate::access::tenant(tenant)?;
        crate::access::change("quota_set", Some(tenant.id), "SELECT multitenancy._quota_set($1, $2, $3, true)", &[
            tenant.id.into(),
            key.as_str().into(),
            quota.into(),
        ])
    };
    run().or_raise();
}

/// Remove a tenant's override for `key`: the plan's limit applies again. Audited.
#[pg_extern(volatile, parallel_unsafe)]
fn quota_reset(tenant: Option<&str>, key: Option<&str>) {
    let run = || {
        let key = validate_key(key)?;
        let tenant = crate::access::tenant(tenant)?;
        crate::access::change("quota_reset", Some(tenant.id), "SELECT multitenancy._quota_set($1, $2, NULL, false)", &[
            tenant.id.into(),
            key.as_str().into(),
        ])
    };
    run().or_raise();
}

/// Add `amount` to the current tenant's metered counter `key` for this month (UTC); refuses
/// (53400, nothing counted) when that would pass the tenant's limit. Returns the new total.
#[pg_extern(volatile, parallel_unsafe)]
fn usage_record(key: Option<&str>, amount: default!(i64, 1)) -> i64 {
    let run = || {
        let key = validate_key(key)?;
        if !is_metered(&key) {
            return Err(MtError::InvalidArgument {
                message: format!("\"{key}\" is counted by multitenancy itself and cannot be recorded"),
                hint: "usage_record() is for metered keys such as 'api_calls'; members, rows and bytes are counted from the tables.".into(),
            });
        }
        if amount <= 0 {
            return Err(MtError::InvalidArgument {
                message: format!("usage amount must be positive (got {amount})"),
                hint: "Record what was used: 1 or more.".into(),
            });
        }
        let tenant = crate::context::current()?;
        registry::as_owner(|| {
            Spi::get_one_with_args::<i64>(
                "SELECT multitenancy._usage_record($1, $2, $3)",
                &[tenant.into(), key.as_str().into(), amount.into()],
            )
            .ctx("quotas::usage_record")
        })
        .map(|used| used.unwrap_or(0))
    };
    run().or_raise()
}
