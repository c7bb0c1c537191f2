//! Quotas and usage: exact per-tenant counters of rows and bytes in tenant-enabled tables,
//! limits from plans and per-tenant overrides, metered counters.
//!
//! Counting: every tenant-enabled table has two triggers (declared in [`crate::tables::spec`], so the
//! guard and `verify()` keep them there). An AFTER ROW trigger adds each written row's tenant,
//! table and size to a per-backend list — no SQL per row. An AFTER STATEMENT trigger then checks
//! the statement's counts per tenant.
//!
//! Only tenants with a `rows`, `bytes` or `rows:<table>` limit are counted: nothing else needs
//! the counters. A tenant without one costs its writers one shared lock ([`counting`]) and no
//! write; its usage is counted from the tables when someone asks (`_usage_live`, an index scan
//! per table). When a limit arrives, the tenant's first counted write sets its counters from the
//! tables ([`start_counting`]) under the exclusive counting lock, after its writers without
//! counting have finished; when the last such limit goes, the counters go ([`_usage_reconcile`]). For a counted tenant: a transaction's first counted write of a tenant takes the
//! tenant's counting lock ([`lock_tenant`]: writers of one tenant queue there, writers of other
//! tenants never meet) and adds to the tenant's `table_usage` rows (the table's and the totals
//! row) in one UPDATE that returns the totals; later statements of the transaction are checked
//! against those totals plus what it counted since ([`Transaction`]), which is written once,
//! before commit. A statement that would pass a limit fails with 53400 and, being one
//! statement, changes nothing; a rolled-back transaction or savepoint takes its counts with it.
//!
//! A row's size is [`row_bytes`]: the uncompressed sizes of its non-null values — the same for
//! a row whatever its storage (compressed, out of line), so the counter can be recomputed from
//! the table exactly (`usage_recompute`).
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::registry;
use crate::registry::tenants;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// The keys the extension counts itself; any other key is a metered counter.
pub fn is_metered(key: &str) -> bool {
    !matches!(key, "members" | "rows" | "bytes") && !key.starts_with("rows:")
}

/// [`is_metered`] for SQL (`_usage`).
#[pg_extern(immutable, strict, parallel_safe)]
fn _quota_is_metered(key: &str) -> bool {
    is_metered(key)
}

/// The limits of one tenant that the counting triggers enforce (`None`: unlimited).
#[derive(Clone, Default)]
struct Limits {
    rows: Option<i64>,
    bytes: Option<i64>,
    /// `rows:<table>`: the table (and its partitions / children) and its limit.
    tables: Vec<(pg_sys::Oid, i64)>,
    /// A `rows:<table>` limit exists, also one whose table does not resolve now (renamed or
    /// moved: its counters must stay exact for when it resolves again).
    table_keys: bool,
}

impl Limits {
    /// Whether the tenant's rows and bytes are counted: only a limit needs the counters.
    fn counted(&self) -> bool {
        self.rows.is_some() || self.bytes.is_some() || self.table_keys
    }
}

/// (tenant, table oid) -> (rows, bytes).
type Deltas = BTreeMap<([u8; 16], u32), (i64, i64)>;

/// A tenant whose counting lock this transaction holds and whose counters it has written: its
/// totals as written, and the (sub)transaction level that wrote them.
#[derive(Clone, Copy)]
struct Held {
    rows: i64,
    bytes: i64,
    level: i32,
}

/// What this transaction has counted. Once a transaction holds a tenant's counting lock, nobody
/// else can change its counters, so further statements for that tenant are checked against the held
/// value plus what is kept here, and written once, before commit — not one UPDATE of the same
/// row per statement, which would make a transaction of n statements cost O(n²).
#[derive(Default)]
struct Transaction {
    held: HashMap<[u8; 16], Held>,
    /// Counted but not written, per subtransaction level (a rolled-back savepoint drops its own).
    unwritten: BTreeMap<i32, Deltas>,
}

impl Transaction {
    fn unwritten_of(&self, tenant: &[u8; 16]) -> (i64, i64) {
        self.unwritten
            .values()
            .flat_map(|d| d.iter())
            .filter(|((t, _), _)| t == tenant)
            .fold((0, 0), |a, (_, v)| (a.0 + v.0, a.1 + v.1))
    }

    fn unwritten_rows(&self, tenant: &[u8; 16], tables: &[pg_sys::Oid]) -> i64 {
        self.unwritten
            .values()
            .flat_map(|d| d.iter())
            .filter(|((t, table), _)| t == tenant && tables.contains(&pg_sys::Oid::from(*table)))
            .map(|(_, v)| v.0)
            .sum()
    }

    /// Everything counted and not written, summed over the levels.
    fn flattened(&self) -> Deltas {
        let mut all = Deltas::new();
        for deltas in self.unwritten.values() {
            for (key, value) in deltas {
                let entry = all.entry(*key).or_insert((0, 0));
                entry.0 += value.0;
                entry.1 += value.1;
            }
        }
        all
    }

    fn add(&mut self, level: i32, key: ([u8; 16], u32), value: (i64, i64)) {
        let entry = self.unwritten.entry(level).or_default().entry(key).or_insert((0, 0));
        entry.0 += value.0;
        entry.1 += value.1;
    }
}

thread_local! {
    /// Rows counted by the row trigger and not yet checked by a statement trigger, per
    /// (sub)transaction level: a statement's rows are checked at its end, at its level; a
    /// subtransaction that fails in the middle of an outer statement's triggers (an exception
    /// block) takes only its own rows with it.
    static PENDING: RefCell<BTreeMap<i32, Deltas>> = const { RefCell::new(BTreeMap::new()) };
    static TRANSACTION: RefCell<Option<Transaction>> = const { RefCell::new(None) };
    /// Limits per tenant, valid for one registry generation (plans and quotas changes bump it).
    static LIMITS: RefCell<(u64, HashMap<[u8; 16], Limits>)> = RefCell::new((u64::MAX, HashMap::new()));
}

fn with_transaction<R>(f: impl FnOnce(&mut Transaction) -> R) -> R {
    TRANSACTION.with(|t| f(t.borrow_mut().get_or_insert_with(Transaction::default)))
}

fn nest_level() -> i32 {
    // SAFETY: reads transaction state.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// The transaction ended (committed or not): nothing is held or pending any more.
pub fn transaction_ended() {
    PENDING.with(|p| p.borrow_mut().clear());
    TRANSACTION.with(|t| t.borrow_mut().take());
}

/// A subtransaction at `level` rolled back: its rows, its counter writes and their locks are gone.
pub fn subtransaction_aborted(level: i32) {
    PENDING.with(|p| p.borrow_mut().retain(|l, _| *l < level));
    TRANSACTION.with(|t| {
        if let Some(txn) = t.borrow_mut().as_mut() {
            txn.unwritten.retain(|l, _| *l < level);
            txn.held.retain(|_, h| h.level < level);
        }
    });
}

/// A subtransaction at `level` committed: what it counted and holds passes to its parent.
pub fn subtransaction_committed(level: i32) {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        if let Some(deltas) = pending.remove(&level) {
            let parent = pending.entry(level - 1).or_default();
            for (key, value) in deltas {
                let entry = parent.entry(key).or_insert((0, 0));
                entry.0 += value.0;
                entry.1 += value.1;
            }
        }
    });
    TRANSACTION.with(|t| {
        if let Some(txn) = t.borrow_mut().as_mut() {
            if let Some(deltas) = txn.unwritten.remove(&level) {
                for (key, value) in deltas {
                    txn.add(level - 1, key, value);
                }
            }
            for held in txn.held.values_mut() {
                if held.level == level {
                    held.level = level - 1;
                }
            }
        }
    });
}

/// Before commit: check what no statement trigger has checked, then write what was counted.
pub fn before_commit() -> Result<()> {
    if PENDING.with(|p| p.borrow().values().any(|d| !d.is_empty())) {
        registry::with_active_snapshot(end_of_statement)?;
    }
    let Some(txn) = TRANSACTION.with(|t| t.borrow_mut().take()) else { return Ok(()) };
    let unwritten = txn.flattened();
    if unwritten.values().all(|v| *v == (0, 0)) {
        return Ok(());
    }
    registry::with_active_snapshot(|| write_unwritten(unwritten))
}

/// `_usage_unwritten()`: what this session's transaction has counted and not yet written, for
/// the readers (tenant_stats, quota_check, usage_drift) to add to the stored counters.
#[pg_extern(volatile, parallel_unsafe)]
fn _usage_unwritten() -> TableIterator<
    'static,
    (name!(tenant_id, pgrx::Uuid), name!(relid, pg_sys::Oid), name!(rows, i64), name!(bytes, i64)),
> {
    let all = TRANSACTION.with(|t| t.borrow().as_ref().map(Transaction::flattened).unwrap_or_default());
    TableIterator::new(all.into_iter().filter(|(_, v)| *v != (0, 0)).map(|((tenant, table), (rows, bytes))| {
        (pgrx::Uuid::from_bytes(tenant), pg_sys::Oid::from(table), rows, bytes)
    }))
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
    let mut total = 0;
    for (i, attr) in crate::catalog::attributes(tupdesc).enumerate() {
        if attr.attisdropped || *nulls.add(i) {
            continue;
        }
        total += value_bytes(attr, *values.add(i));
    }
    total
}

/// The attribute number (0-based) of the tenant column in a tuple descriptor, if it has one of
/// type uuid.
///
/// # Safety
/// `tupdesc` is a valid tuple descriptor.
unsafe fn tenant_attno(tupdesc: pg_sys::TupleDesc) -> Option<usize> {
    crate::catalog::attributes(tupdesc).position(|attr| {
        !attr.attisdropped
            && attr.atttypid == pg_sys::UUIDOID
            && std::ffi::CStr::from_ptr(attr.attname.data.as_ptr()).to_bytes()
                == crate::tables::spec::TENANT_COLUMN.as_bytes()
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

use crate::catalog::{trigger_data, FINFO_V1};

// The C entry points below, which pgrx's function macros do not declare: the triggers read the
// trigger's slots directly (no PgHeapTuple per row), and row_bytes takes any record.
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
"#,
    name = "quotas_counting",
    requires = ["bootstrap"]
);

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
    check_trigger(data, 0).or_raise();
    let event = data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let table = (*data.tg_relation).rd_id;
    let add = |slot: *mut pg_sys::TupleTableSlot, sign: i64| {
        if slot.is_null() {
            return;
        }
        if let Some((tenant, bytes)) = slot_row(slot) {
            PENDING.with(|p| {
                let mut pending = p.borrow_mut();
                let entry = pending.entry(nest_level()).or_default().entry((tenant, table.to_u32())).or_insert((0, 0));
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
    check_trigger(data, 1).or_raise();
    end_of_statement().or_raise();
    if data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_TRUNCATE {
        // TRUNCATE fires this for every table it empties (partitions included).
        forget((*data.tg_relation).rd_id).or_raise();
    }
    pg_sys::Datum::from(0)
}

thread_local! {
    /// Tables whose counting triggers [`check_trigger`] has accepted. A table leaves the set when
    /// its relcache entry is invalidated (any DDL on it, tenant_disable, DROP, a rolled-back
    /// tenant_enable), so the registry is read once per table, not once per row.
    static CHECKED: RefCell<std::collections::HashSet<u32>> = RefCell::new(std::collections::HashSet::new());
}

pub fn init() {
    // SAFETY: registers a callback for the life of the backend; it only touches CHECKED.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(functions_changed),
            pg_sys::Datum::from(0),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // The limits cache holds `rows:<table>` keys resolved to tables: DDL that renames or moves a
    // table changes what they name (found by review).
    LIMITS.with(|l| l.borrow_mut().0 = u64::MAX);
    if relid == pg_sys::InvalidOid || TABLE_USAGE.with(std::cell::Cell::get) == Some(relid) {
        TABLE_USAGE.with(|t| t.set(None));
    }
    CHECKED.with(|c| {
        let mut checked = c.borrow_mut();
        if relid == pg_sys::InvalidOid {
            checked.clear();
        } else {
            checked.remove(&relid.to_u32());
        }
    });
}

/// The counting trigger functions are EXECUTE-able by everyone (whoever runs tenant_enable
/// creates the triggers), so anyone can attach them to a table of their own: they must never
/// trust the table they fire on. A trigger counts only as the one `tenant_enable` made (its
/// name, AFTER, its level) on a tenant-enabled table with a uuid tenant column; anything else is
/// refused before a row is looked at. In read-only admin mode, no write of an enabled table
/// passes (transaction_read_only can be switched off by a function's SET clause; this cannot).
///
/// # Safety
/// `data` is the trigger data of the current call.
unsafe fn check_trigger(data: &pg_sys::TriggerData, spec_index: usize) -> Result<()> {
    let spec = &crate::tables::spec::TRIGGERS[spec_index];
    let rel = data.tg_relation;
    let relid = (*rel).rd_id;
    if crate::context::admin::admin_mode().is_some_and(|m| !m.write) {
        return Err(MtError::AdminReadOnly { table: relation_name(rel) });
    }
    if crate::context::moving().is_some_and(|m| !m.import) {
        return Err(MtError::ExportReadOnly { table: relation_name(rel) });
    }
    if CHECKED.with(|c| c.borrow().contains(&relid.to_u32())) {
        return Ok(());
    }
    let misused = |reason: &str| MtError::TriggerMisused {
        function: if spec.row { "_usage_row" } else { "_usage_statement" },
        table: relation_name(rel),
        reason: reason.into(),
    };
    let event = data.tg_event;
    let after = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == 0;
    let row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
    let trigger = data.tg_trigger;
    let name = if trigger.is_null() { &b""[..] } else { std::ffi::CStr::from_ptr((*trigger).tgname).to_bytes() };
    if !after || row != spec.row || name != spec.name.as_bytes() {
        return Err(misused(&format!(
            "only the AFTER {} trigger {} that tenant_enable() creates may call it",
            if spec.row { "ROW" } else { "STATEMENT" },
            spec.name
        )));
    }
    if tenant_attno((*rel).rd_att).is_none() {
        return Err(misused("the table has no tenant_id column of type uuid"));
    }
    if !registry::is_enabled(relid)? {
        return Err(misused("the table is not tenant-enabled"));
    }
    CHECKED.with(|c| c.borrow_mut().insert(relid.to_u32()));
    Ok(())
}

/// `schema.table` of an open relation, for messages.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    let namespace = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
    let schema = if namespace.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(namespace).to_string_lossy().into_owned()
    };
    let name = std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy();
    format!("{schema}.{name}")
}

// ---------------------------------------------------------------------------------------------
// Applying counts and checking limits

/// The counter statements. Every name and operator is qualified: they run under the caller's
/// search_path (see `registry::as_owner_qualified`).
///
/// A tenant's counters are one row per table it has rows in, and a row of totals (`relid` 0,
/// printed `-`). One UPDATE adds to both — one index scan, no aggregate — and returns them.
const ADD_SQL: &str = "\
    UPDATE multitenancy.table_usage AS u \
       SET row_count = u.row_count OPERATOR(pg_catalog.+) $3, byte_count = u.byte_count OPERATOR(pg_catalog.+) $4 \
     WHERE u.tenant_id OPERATOR(pg_catalog.=) $1 \
       AND u.relid OPERATOR(pg_catalog.=) ANY (ARRAY[0, $2]::pg_catalog.oid[]::pg_catalog.regclass[]) \
    RETURNING u.relid::pg_catalog.oid, u.row_count, u.byte_count";
/// The first count of a tenant (or of a tenant in a table): the rows the UPDATE did not find,
/// with the amounts it would have added.
const CREATE_SQL: &str = "\
    INSERT INTO multitenancy.table_usage (tenant_id, relid, row_count, byte_count) \
    VALUES ($1, 0::pg_catalog.oid::pg_catalog.regclass, $3, $4), ($1, $2::pg_catalog.regclass, $3, $4) \
    ON CONFLICT DO NOTHING";
const TOTALS_SQL: &str = "\
    SELECT 0::pg_catalog.oid, u.row_count, u.byte_count FROM multitenancy.table_usage AS u \
     WHERE u.tenant_id OPERATOR(pg_catalog.=) $1 AND u.relid OPERATOR(pg_catalog.=) 0::pg_catalog.oid::pg_catalog.regclass \
       AND $2 IS NOT NULL AND $3 IS NOT NULL AND $4 IS NOT NULL";

thread_local! {
    /// The statements, prepared once per session with raw SPI: they run with the latest
    /// snapshot (see [`add`]), which pgrx's SPI wrapper cannot pass.
    static SPI_PLANS: std::cell::Cell<Option<[usize; 3]>> = const { std::cell::Cell::new(None) };
}

/// # Safety
/// Inside `SPI_connect`.
unsafe fn plans() -> Result<[pg_sys::SPIPlanPtr; 3]> {
    if let Some(plans) = SPI_PLANS.with(std::cell::Cell::get) {
        return Ok(plans.map(|p| p as pg_sys::SPIPlanPtr));
    }
    let mut plans = [0usize; 3];
    for (i, sql) in [ADD_SQL, CREATE_SQL, TOTALS_SQL].into_iter().enumerate() {
        let mut types = [pg_sys::UUIDOID, pg_sys::OIDOID, pg_sys::INT8OID, pg_sys::INT8OID];
        let sql = std::ffi::CString::new(sql).expect("no NUL in our SQL");
        let plan = pg_sys::SPI_prepare(sql.as_ptr(), 4, types.as_mut_ptr());
        if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
            return Err(MtError::internal("quotas", "cannot prepare the counter statements"));
        }
        plans[i] = plan as usize;
    }
    SPI_PLANS.with(|p| p.set(Some(plans)));
    Ok(plans.map(|p| p as pg_sys::SPIPlanPtr))
}

/// (table, rows, bytes).
type TableCount = (pg_sys::Oid, i64, i64);

/// What [`add`] did.
enum Added {
    /// Added to the counters: the tenant's totals now.
    To((i64, i64)),
    /// The tenant had no counters (it was not counted until now): they were set from the tables,
    /// with everything this transaction wrote in them — nothing of it is to be added any more.
    Recounted((i64, i64)),
    /// The tenant has no counters and no limit that needs them: nothing counted.
    NotCounted,
}

/// Add to the counters of (tenant, table) and return the tenant's new totals.
///
/// The caller holds the tenant's lock ([`lock_tenant`]), so nobody else changes the tenant's
/// counters until this transaction ends. The statements run with the latest snapshot, as
/// PostgreSQL's foreign-key checks do: what was committed before the lock was granted is seen
/// also in a REPEATABLE READ or SERIALIZABLE transaction, so the totals are exact at every
/// isolation level.
fn add(tenant: pgrx::Uuid, table: pg_sys::Oid, rows: i64, bytes: i64) -> Result<Added> {
    if let Some(totals) = add_to_counters(tenant, table, rows, bytes)? {
        return Ok(Added::To(totals));
    }
    // Counters are started only for a tenant that needs them as of now (never from a stale
    // view of its limits: counters a limit does not need would go stale unseen).
    if !counted_now(tenant)? {
        return Ok(Added::NotCounted);
    }
    let totals = start_counting(tenant)?;
    Ok(Added::Recounted(totals))
}

/// [`add`] to existing counters; `None` when the tenant has none.
fn add_to_counters(tenant: pgrx::Uuid, table: pg_sys::Oid, rows: i64, bytes: i64) -> Result<Option<(i64, i64)>> {
    registry::as_owner_qualified(|| {
        // SAFETY: plain SPI use between SPI_connect and SPI_finish; an ERROR inside unwinds
        // through pgrx's guard and the abort cleans SPI up.
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                return Err(MtError::internal("quotas", "SPI_connect failed"));
            }
            let [add_plan, create_plan, totals_plan] = plans()?;
            let uuid = tenant.into_datum().expect("a uuid datum");
            let mut args = [uuid, pg_sys::Datum::from(table), pg_sys::Datum::from(rows), pg_sys::Datum::from(bytes)];
            let nulls = c"    ";
            let mut run = |plan: pg_sys::SPIPlanPtr| {
                pg_sys::SPI_execute_snapshot(
                    plan,
                    args.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    false,
                    true,
                    0,
                )
            };
            // The totals row among the rows a statement returned.
            let totals = || {
                let table = &*pg_sys::SPI_tuptable;
                (0..pg_sys::SPI_processed as usize).find_map(|i| {
                    let row = *table.vals.add(i);
                    let mut null = false;
                    let relid = pg_sys::SPI_getbinval(row, table.tupdesc, 1, &mut null).value() as u32;
                    (relid == 0).then(|| {
                        (
                            pg_sys::SPI_getbinval(row, table.tupdesc, 2, &mut null).value() as i64,
                            pg_sys::SPI_getbinval(row, table.tupdesc, 3, &mut null).value() as i64,
                        )
                    })
                })
            };
            let rc = run(add_plan);
            if rc != pg_sys::SPI_OK_UPDATE_RETURNING as i32 {
                return Err(MtError::internal("quotas", format!("counter update returned {rc}")));
            }
            let found = match pg_sys::SPI_processed {
                2 => totals(),
                // No totals row: the tenant has no counters.
                0 if !counts_everyone() => None,
                _ => {
                    run(create_plan);
                    run(totals_plan);
                    Some(totals().ok_or_else(|| MtError::internal("quotas", "no totals row"))?)
                }
            };
            pg_sys::SPI_finish();
            Ok(found)
        }
    })
}

/// Run one statement as the registry owner with the latest snapshot (see [`add`]); the rows it
/// returned, each as the int8 values of its columns (NULL as 0). The search_path is pinned: not
/// on the per-row path, and a name or operator the statement leaves unqualified must not resolve
/// to the caller's schemas (the CASE of [`limits_now`] compared with `=` unqualified).
fn latest(sql: &str, types: &mut [pg_sys::Oid], args: &mut [pg_sys::Datum]) -> Result<Vec<Vec<i64>>> {
    registry::as_owner(|| {
        // SAFETY: plain SPI use between SPI_connect and SPI_finish, as in add_to_counters.
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                return Err(MtError::internal("quotas", "SPI_connect failed"));
            }
            let sql = std::ffi::CString::new(sql).expect("no NUL in our SQL");
            let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                return Err(MtError::internal("quotas", "cannot prepare a counter statement"));
            }
            let nulls = std::ffi::CString::new(" ".repeat(args.len())).expect("spaces");
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                args.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                false,
                true,
                0,
            );
            if rc < 0 {
                return Err(MtError::internal("quotas", format!("counter statement returned {rc}")));
            }
            let mut rows = Vec::new();
            if !pg_sys::SPI_tuptable.is_null() {
                let table = &*pg_sys::SPI_tuptable;
                let columns = (*table.tupdesc).natts;
                for i in 0..pg_sys::SPI_processed as usize {
                    let row = *table.vals.add(i);
                    let mut values = Vec::new();
                    for column in 1..=columns {
                        let mut null = false;
                        let value = pg_sys::SPI_getbinval(row, table.tupdesc, column, &mut null);
                        values.push(if null { 0 } else { value.value() as i64 });
                    }
                    rows.push(values);
                }
            }
            pg_sys::SPI_finish();
            Ok(rows)
        }
    })
}

/// The enabled tables that hold rows (physical tables: partitions, not their parents).
fn physical_enabled_tables() -> Result<Vec<pg_sys::Oid>> {
    registry::as_owner(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT e.relid::oid FROM multitenancy.enabled_tables e \
                       JOIN pg_class c ON c.oid = e.relid AND c.relkind = 'r' ORDER BY 1",
                    None,
                    &[],
                )
                .ctx("quotas::physical_enabled_tables")?
                .filter_map(|row| row.get::<pg_sys::Oid>(1).ctx("relid").transpose())
                .collect::<Result<Vec<_>>>()
        })
    })
}

/// (tenant, rows, bytes).
type TenantCount = (pgrx::Uuid, i64, i64);

/// What `table` (a physical enabled table) holds of `tenants` (every tenant: `None`), per tenant
/// with rows in it; `latest`: with the latest snapshot (see [`add`]), else the current one.
///
/// Counted as the table's owner, in a security-restricted operation with FORCE not applying to
/// it (it sees every row; no policy runs), with settings discarded afterwards: planning the count
/// loads the table's index predicates and expressions and may run the owner's functions in them,
/// which must never run with the rights of whoever asks (the registry owner, a superuser) —
/// found by review: an IMMUTABLE function in an index predicate made its owner superuser through
/// `tenant_stats()`.
fn count_table(table: pg_sys::Oid, tenants: Option<&[pgrx::Uuid]>, latest: bool) -> Result<Vec<TenantCount>> {
    // A table distributed by Citus is not counted (its shards have no counting triggers, and
    // the workers take no owner's count without a tenant): it holds none of the tenants' usage.
    if crate::citus::is_distributed(table)? {
        return Ok(Vec::new());
    }
    let rel = crate::catalog::Relation::lookup(table)?;
    let sql = format!(
        "SELECT t.tenant_id, pg_catalog.count(*)::pg_catalog.int8, \
                COALESCE(pg_catalog.sum(multitenancy.row_bytes(t)), 0)::pg_catalog.int8 \
           FROM ONLY {} AS t {} GROUP BY t.tenant_id",
        rel.sql(),
        if tenants.is_some() { "WHERE t.tenant_id OPERATOR(pg_catalog.=) ANY ($1)" } else { "" }
    );
    let array = tenants.map(|t| t.to_vec().into_datum().expect("an array"));
    registry::as_table_owner(table, || {
        let _unforced = registry::NoForceRls::enter();
        crate::context::admin::suspended(|| {
            // SAFETY: plain SPI use between SPI_connect and SPI_finish, as in add_to_counters;
            // the uuid values are copied out before SPI_finish.
            unsafe {
                if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                    return Err(MtError::internal("quotas", "SPI_connect failed"));
                }
                let sql = std::ffi::CString::new(sql).expect("no NUL in our SQL");
                let mut types = [pg_sys::UUIDARRAYOID];
                let mut args = [array.unwrap_or(pg_sys::Datum::from(0))];
                let nargs = if tenants.is_some() { 1 } else { 0 };
                let plan = pg_sys::SPI_prepare(sql.as_ptr(), nargs, types.as_mut_ptr());
                if plan.is_null() {
                    return Err(MtError::internal("quotas", "cannot prepare the count of a table"));
                }
                let snapshot = if latest { pg_sys::GetLatestSnapshot() } else { pg_sys::GetActiveSnapshot() };
                let rc = pg_sys::SPI_execute_snapshot(
                    plan,
                    args.as_mut_ptr(),
                    c" ".as_ptr(),
                    snapshot,
                    std::ptr::null_mut(),
                    !latest,
                    true,
                    0,
                );
                if rc != pg_sys::SPI_OK_SELECT as i32 {
                    return Err(MtError::internal("quotas", format!("the count of a table returned {rc}")));
                }
                let table = &*pg_sys::SPI_tuptable;
                let mut counts = Vec::new();
                for i in 0..pg_sys::SPI_processed as usize {
                    let row = *table.vals.add(i);
                    let mut null = false;
                    let id = pg_sys::SPI_getbinval(row, table.tupdesc, 1, &mut null);
                    if null {
                        continue;
                    }
                    let mut bytes = [0u8; 16];
                    std::ptr::copy_nonoverlapping(id.cast_mut_ptr::<u8>(), bytes.as_mut_ptr(), 16);
                    let rows = pg_sys::SPI_getbinval(row, table.tupdesc, 2, &mut null).value() as i64;
                    let size = pg_sys::SPI_getbinval(row, table.tupdesc, 3, &mut null).value() as i64;
                    counts.push((pgrx::Uuid::from_bytes(bytes), rows, size));
                }
                pg_sys::SPI_finish();
                Ok(counts)
            }
        })
    })
}

/// `multitenancy._usage_actual(table)`: what a physical enabled table holds per tenant, counted as
/// its owner (see [`count_table`]), with the caller's snapshot. For usage_drift() and the recount
/// of tenant_enable.
#[pg_extern(stable, strict, parallel_unsafe)]
fn _usage_actual(
    p_table: crate::catalog::Regclass,
) -> TableIterator<'static, (name!(tenant_id, pgrx::Uuid), name!(row_count, i64), name!(byte_count, i64))> {
    TableIterator::new(count_table(p_table.0, None, false).or_raise())
}

/// `multitenancy._usage_actual_in(table, tenants)`: [`_usage_actual`] for some tenants.
#[pg_extern(stable, strict, parallel_unsafe)]
fn _usage_actual_in(
    p_table: crate::catalog::Regclass,
    p_tenants: Vec<pgrx::Uuid>,
) -> TableIterator<'static, (name!(tenant_id, pgrx::Uuid), name!(row_count, i64), name!(byte_count, i64))> {
    TableIterator::new(count_table(p_table.0, Some(&p_tenants), false).or_raise())
}

/// What every enabled table holds of the tenant, as of now (committed rows and this
/// transaction's): (table oid, rows, bytes) of the tables it has rows in.
fn count_tenant(tenant: pgrx::Uuid) -> Result<Vec<TableCount>> {
    let mut counts = Vec::new();
    for table in physical_enabled_tables()? {
        for (_, rows, bytes) in count_table(table, Some(&[tenant]), true)? {
            counts.push((table, rows, bytes));
        }
    }
    Ok(counts)
}

/// Set a tenant's counters from the tables (the tenant's counting lock held, exclusive): the
/// start of counting it. What this transaction counted of it and did not write is in the tables.
/// Returns the totals.
fn start_counting(tenant: pgrx::Uuid) -> Result<(i64, i64)> {
    let counts = count_tenant(tenant)?;
    let totals = counts.iter().fold((0, 0), |t, c| (t.0 + c.1, t.1 + c.2));
    write_counters(tenant, Some((&counts, totals)))?;
    cancel_unwritten(None, Some(tenant));
    Ok(totals)
}

/// Replace the tenant's counters with `counts` and `totals` (`None`: no counters, the tenant is
/// not counted).
fn write_counters(tenant: pgrx::Uuid, counts: Option<(&[TableCount], (i64, i64))>) -> Result<()> {
    let uuid = tenant.into_datum().expect("a uuid datum");
    latest(
        "DELETE FROM multitenancy.table_usage u WHERE u.tenant_id OPERATOR(pg_catalog.=) $1",
        &mut [pg_sys::UUIDOID],
        &mut [uuid],
    )?;
    let Some((counts, totals)) = counts else { return Ok(()) };
    let mut relids: Vec<i64> = vec![0];
    let mut rows: Vec<i64> = vec![totals.0];
    let mut bytes: Vec<i64> = vec![totals.1];
    for &(table, r, b) in counts {
        relids.push(i64::from(table.to_u32()));
        rows.push(r);
        bytes.push(b);
    }
    latest(
        "INSERT INTO multitenancy.table_usage (tenant_id, relid, row_count, byte_count) \
         SELECT $1, x.r::pg_catalog.oid::pg_catalog.regclass, x.c, x.b \
           FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) AS x(r, c, b)",
        &mut [pg_sys::UUIDOID, pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
        &mut [
            uuid,
            relids.into_datum().expect("an array"),
            rows.into_datum().expect("an array"),
            bytes.into_datum().expect("an array"),
        ],
    )?;
    Ok(())
}

/// The limits of a tenant as the registry holds them now (the latest snapshot, also under
/// REPEATABLE READ and SERIALIZABLE, whose transaction snapshot may predate a limit), not from
/// the cache: after waiting for its counting lock, and to fill the cache ([`limits_of`]).
fn limits_now(tenant: pgrx::Uuid) -> Result<Limits> {
    let uuid = tenant.into_datum().expect("a uuid datum");
    let rows = latest(
        "SELECT CASE WHEN q.key OPERATOR(pg_catalog.=) 'rows' THEN 1 \
                     WHEN q.key OPERATOR(pg_catalog.=) 'bytes' THEN 2 ELSE 3 END::pg_catalog.int8, q.quota, \
                COALESCE(CASE WHEN q.key OPERATOR(pg_catalog.~~) 'rows:%' \
                              THEN pg_catalog.to_regclass(pg_catalog.substr(q.key, 6))::pg_catalog.oid::pg_catalog.int8 END, 0) \
           FROM multitenancy._quotas($1) q \
          WHERE q.quota IS NOT NULL \
            AND (q.key OPERATOR(pg_catalog.=) ANY ('{rows,bytes}'::pg_catalog.text[]) \
                 OR q.key OPERATOR(pg_catalog.~~) 'rows:%')",
        &mut [pg_sys::UUIDOID],
        &mut [uuid],
    )?;
    let mut limits = Limits::default();
    for row in rows {
        match row[0] {
            1 => limits.rows = Some(row[1]),
            2 => limits.bytes = Some(row[1]),
            _ => {
                limits.table_keys = true;
                if row[2] != 0 {
                    limits.tables.push((pg_sys::Oid::from(row[2] as u32), row[1]));
                }
            }
        }
    }
    Ok(limits)
}

fn counted_now(tenant: pgrx::Uuid) -> Result<bool> {
    limits_now(tenant).map(|l| l.counted())
}

/// Whether this transaction's snapshot may predate committed changes (REPEATABLE READ and
/// SERIALIZABLE): limits are then read as of now ([`limits_now`]).
fn old_snapshot() -> bool {
    // SAFETY: reads the transaction's isolation level.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// `multitenancy._usage_live(tenant)`: usage of the tenants that are not counted (no counters:
/// no limit needs them), counted from the tables now: of every such tenant the caller may see
/// (row level security on the registry: an application its own tenant, a DBA all; `tenant` NULL)
/// or of one, (tenant, table, rows, bytes) per table it has rows in. Each table is read as its
/// owner ([`count_table`]), with the caller's snapshot; it costs what those tenants' rows cost
/// (an index scan on `tenant_id` per table).
#[pg_extern(stable, parallel_unsafe)]
fn _usage_live(
    tenant: Option<pgrx::Uuid>,
) -> TableIterator<
    'static,
    (name!(tenant_id, pgrx::Uuid), name!(relid, pg_sys::Oid), name!(row_count, i64), name!(byte_count, i64)),
> {
    TableIterator::new(live(tenant).or_raise())
}

fn live(tenant: Option<pgrx::Uuid>) -> Result<Vec<(pgrx::Uuid, pg_sys::Oid, i64, i64)>> {
    // As the caller, whose row level security on the registry decides which tenants it sees.
    let tenants: Vec<pgrx::Uuid> = registry::with_pinned_search_path(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT t.id FROM multitenancy.tenants t \
                      WHERE ($1::uuid IS NULL OR t.id = $1) \
                        AND NOT EXISTS (SELECT 1 FROM multitenancy.table_usage u \
                                         WHERE u.tenant_id = t.id AND u.relid = 0::oid::regclass)",
                    None,
                    &[tenant.into()],
                )
                .ctx("quotas::live")?
                .filter_map(|row| row.get::<pgrx::Uuid>(1).ctx("id").transpose())
                .collect::<Result<Vec<_>>>()
        })
    })?;
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let mut live = Vec::new();
    for table in physical_enabled_tables()? {
        for (tenant, rows, bytes) in count_table(table, Some(&tenants), false)? {
            live.push((tenant, table, rows, bytes));
        }
    }
    Ok(live)
}

/// `multitenancy._usage_reconcile(tenant)`: after a change of the tenant's limits (quota_set,
/// quota_reset, a plan change, a plan's new limits, an import), stop counting a tenant that has
/// no `rows`, `bytes` or `rows:<table>` limit any more: its counters go, under its counting lock.
/// (A tenant that needs counters gets them at its first counted write.) Returns whether it
/// changed anything.
#[pg_extern(volatile, parallel_unsafe)]
fn _usage_reconcile(tenant: pgrx::Uuid) -> bool {
    reconcile(tenant).or_raise()
}

fn reconcile(tenant: pgrx::Uuid) -> Result<bool> {
    // Only stopping is done here. A tenant that is counted and has no counters gets them at its
    // first counted write ([`add`]: under the exclusive counting lock, which waits for the
    // writers that were not counting, from the tables as of then) and is reported from the tables
    // until then — so introducing a limit locks nobody (review: plan_set on a plan of 50 000
    // tenants locked each of them, past max_locks_per_transaction). The caller holds the
    // tenant's or the plan's row lock, so its limits do not change meanwhile.
    if counted_now(tenant)? || !has_counters(tenant)? {
        return Ok(false);
    }
    // Counters no limit needs: dropped under the exclusive lock (after the writers that count),
    // so that none are left to go stale and be trusted when a limit comes back.
    lock_tenant(tenant)?;
    if counted_now(tenant)? || !has_counters(tenant)? {
        return Ok(false);
    }
    cancel_unwritten(None, Some(tenant));
    write_counters(tenant, None).map(|_| true)
}

/// `multitenancy._usage_start(tenant)`: give a tenant whose limits need counters and that has
/// none its counters now, from the tables, under its exclusive counting lock (`usage_recompute`;
/// otherwise its first counted write does it). Returns whether it did.
#[pg_extern(volatile, parallel_unsafe)]
fn _usage_start(tenant: pgrx::Uuid) -> bool {
    let start = || -> Result<bool> {
        if !counted_now(tenant)? || has_counters(tenant)? {
            return Ok(false);
        }
        lock_tenant(tenant)?;
        if !counted_now(tenant)? || has_counters(tenant)? {
            return Ok(false);
        }
        start_counting(tenant).map(|_| true)
    };
    start().or_raise()
}

/// Whether the tenant has counters (its totals row), as of now.
fn has_counters(tenant: pgrx::Uuid) -> Result<bool> {
    let uuid = tenant.into_datum().expect("a uuid datum");
    Ok(!latest(
        "SELECT 1::pg_catalog.int8 FROM multitenancy.table_usage u \
          WHERE u.tenant_id OPERATOR(pg_catalog.=) $1 \
            AND u.relid OPERATOR(pg_catalog.=) 0::pg_catalog.oid::pg_catalog.regclass",
        &mut [pg_sys::UUIDOID],
        &mut [uuid],
    )?
    .is_empty())
}

/// Take the tenant's counting lock until the transaction ends: every transaction that counts
/// rows of the tenant takes it first, so they count one after the other, and transactions of
/// other tenants never meet. A heavyweight lock on a (table_usage, hash of the tenant) object
/// pair: cheaper than a row lock (no WAL), visible in pg_locks, seen by the deadlock detector.
pub fn lock_tenant(tenant: pgrx::Uuid) -> Result<()> {
    lock_tenant_in(tenant, pg_sys::ExclusiveLock).map(|_| ())
}

thread_local! {
    /// `multitenancy.table_usage`'s oid, forgotten with its relcache entry (`relation_changed`).
    static TABLE_USAGE: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
}

/// The tenant's counting lock tag: a (table_usage, hash of the tenant) object pair.
fn tenant_lock_tag(tenant: pgrx::Uuid) -> Result<pg_sys::LOCKTAG> {
    let b = tenant.as_bytes();
    let hash = (0..4).fold(0u32, |h, i| h ^ u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]));
    let class = match TABLE_USAGE.with(std::cell::Cell::get) {
        Some(class) => class,
        None => {
            let class = registry::relid(c"table_usage")?;
            TABLE_USAGE.with(|t| t.set(Some(class)));
            class
        }
    };
    Ok(pg_sys::LOCKTAG {
        // SAFETY: a backend global.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: class.to_u32(),
        locktag_field3: hash,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    })
}

/// Take the tenant's counting lock in `mode` for the transaction (released when it ends, or with
/// a rolled-back subtransaction that took it). Returns whether this call took it (`false`: the
/// transaction held it already).
fn lock_tenant_in(tenant: pgrx::Uuid, mode: u32) -> Result<bool> {
    let tag = tenant_lock_tag(tenant)?;
    // SAFETY: takes a regular lock as LockDatabaseObject does.
    let result = unsafe { pg_sys::LockAcquire(&tag, mode as i32, false, false) };
    Ok(result != pg_sys::LockAcquireResult::LOCKACQUIRE_ALREADY_HELD
        && result != pg_sys::LockAcquireResult::LOCKACQUIRE_ALREADY_CLEAR)
}

fn unlock_tenant_in(tenant: pgrx::Uuid, mode: u32) -> Result<()> {
    let tag = tenant_lock_tag(tenant)?;
    // SAFETY: releases one hold of a lock this transaction took above.
    unsafe { pg_sys::LockRelease(&tag, mode as i32, false) };
    Ok(())
}

/// Whether this transaction counts the tenant's rows, with the lock that goes with the answer
/// taken (until the transaction ends):
/// - a tenant with a `rows`, `bytes` or `rows:<table>` limit is counted: its counting lock
///   ([`lock_tenant`], exclusive), then the counters;
/// - a tenant without one is not, and its writers take the same lock in ROW EXCLUSIVE mode,
///   which they share with each other and which waits for, and makes wait, whoever starts or
///   stops counting the tenant (exclusive: the first counted write, [`_usage_reconcile`]). So
///   when a limit arrives, the recount sees every uncounted writer's rows committed, and writers
///   that come after it count.
///
/// A lock granted after a wait may come after a registry change (a limit set or removed): the
/// limits are then read again, as of now.
fn counting(tenant: pgrx::Uuid) -> Result<bool> {
    if counts_everyone() {
        lock_tenant(tenant)?;
        return Ok(true);
    }
    let generation = tenants::current_generation();
    // Under REPEATABLE READ and SERIALIZABLE the limits read with the transaction's snapshot may
    // predate a limit set (or removed) since: found by review, such a writer passed a limit set
    // during its transaction. Once the lock is held, nobody starts or stops counting the tenant
    // until this transaction ends, so one read as of now per tenant and transaction decides.
    let old_snapshot = old_snapshot();
    if !limits_of(tenant)?.counted() {
        let newly = lock_tenant_in(tenant, pg_sys::RowExclusiveLock)?;
        let recheck = tenants::current_generation() != generation || (old_snapshot && newly);
        if !recheck || !counted_now(tenant)? {
            return Ok(false);
        }
        // A limit arrived while this statement ran. Not holding the shared mode while waiting
        // for the exclusive one keeps two such writers from deadlocking.
        if newly {
            unlock_tenant_in(tenant, pg_sys::RowExclusiveLock)?;
        }
    }
    lock_tenant(tenant)?;
    if tenants::current_generation() != generation || old_snapshot {
        // The limit may have gone while this statement waited (or before an old snapshot): then
        // not counted (the lock stays until the end).
        return counted_now(tenant);
    }
    Ok(true)
}

thread_local! {
    /// Whether the installed SQL predates counting only limited tenants (see [`counts_everyone`]);
    /// cleared by any change of `pg_proc`.
    static COUNTS_EVERYONE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether every tenant is counted, as version 0.1.0's SQL expects (its reports read only the
/// counters): the library was replaced and `ALTER EXTENSION multitenancy UPDATE` has not run yet.
/// Told by `_usage_reconcile` missing, which counts more, never less.
fn counts_everyone() -> bool {
    if let Some(known) = COUNTS_EVERYONE.with(std::cell::Cell::get) {
        return known;
    }
    let missing = crate::catalog::extension_function(c"_usage_reconcile", &[pg_sys::UUIDOID]).is_none();
    COUNTS_EVERYONE.with(|c| c.set(Some(missing)));
    missing
}

#[pg_guard]
unsafe extern "C-unwind" fn functions_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    COUNTS_EVERYONE.with(|c| c.set(None));
}

/// `multitenancy._usage_lock(tenant)`: [`lock_tenant`], for the SQL functions that set counters.
#[pg_extern(volatile, parallel_unsafe)]
fn _usage_lock(tenant: pgrx::Uuid) {
    lock_tenant(tenant).or_raise()
}

/// Group (tenant, table) deltas by tenant, in uuid order: a statement writing several tenants
/// (admin mode) takes their locks in one order, as every other statement does.
fn by_tenant(deltas: Deltas) -> BTreeMap<[u8; 16], Vec<(pg_sys::Oid, i64, i64)>> {
    let mut grouped: BTreeMap<[u8; 16], Vec<(pg_sys::Oid, i64, i64)>> = BTreeMap::new();
    for ((tenant, table), (rows, bytes)) in deltas {
        if rows != 0 || bytes != 0 {
            grouped.entry(tenant).or_default().push((pg_sys::Oid::from(table), rows, bytes));
        }
    }
    grouped
}

/// The end of a statement: count its rows and enforce the limits.
///
/// A tenant this transaction does not hold yet is written at once (the write takes its lock and
/// returns the counters as they are now, with every committed change in them); a tenant it holds
/// is checked in memory against the held counters plus what the transaction counted since.
fn end_of_statement() -> Result<()> {
    let level = nest_level();
    let statement = PENDING.with(|p| p.borrow_mut().remove(&level)).unwrap_or_default();
    if statement.is_empty() {
        return Ok(());
    }
    for (tenant, tables) in by_tenant(statement) {
        let id = pgrx::Uuid::from_bytes(tenant);
        let rows: i64 = tables.iter().map(|t| t.1).sum();
        let bytes: i64 = tables.iter().map(|t| t.2).sum();
        let (held, (rows_since, bytes_since)) =
            with_transaction(|txn| (txn.held.get(&tenant).copied(), txn.unwritten_of(&tenant)));
        let (stored_rows, stored_bytes) = match held {
            Some(held) => (held.rows + rows, held.bytes + bytes),
            None => {
                if !counting(id)? {
                    continue;
                }
                let mut totals = Some((0, 0));
                for &(table, table_rows, table_bytes) in &tables {
                    match add(id, table, table_rows, table_bytes)? {
                        Added::To(now) => totals = Some(now),
                        // The counters were set from the tables, this statement's rows included.
                        Added::Recounted(now) => {
                            totals = Some(now);
                            break;
                        }
                        Added::NotCounted => {
                            totals = None;
                            break;
                        }
                    }
                }
                match totals {
                    Some(totals) => totals,
                    None => continue,
                }
            }
        };
        let (total_rows, total_bytes) = (stored_rows + rows_since, stored_bytes + bytes_since);
        if rows > 0 || bytes > 0 {
            let limits = if old_snapshot() { limits_now(id)? } else { limits_of(id)? };
            if let Some(quota) = limits.rows.filter(|q| rows > 0 && total_rows > *q) {
                return Err(exceeded(id, "rows", total_rows - rows, rows, quota));
            }
            if let Some(quota) = limits.bytes.filter(|q| bytes > 0 && total_bytes > *q) {
                return Err(exceeded(id, "bytes", total_bytes - bytes, bytes, quota));
            }
            for &(limited, quota) in &limits.tables {
                check_table(id, limited, quota, &tables, held.is_some())?;
            }
        }
        with_transaction(|txn| match held {
            Some(_) => {
                for &(table, table_rows, table_bytes) in &tables {
                    txn.add(level, (tenant, table.to_u32()), (table_rows, table_bytes));
                }
            }
            None => {
                txn.held.insert(tenant, Held { rows: stored_rows, bytes: stored_bytes, level });
            }
        });
    }
    Ok(())
}

/// Enforce a `rows:<table>` limit: the rows of the tenant in the table and everything under it.
/// `in_memory`: the statement's rows are not written yet.
fn check_table(
    tenant: pgrx::Uuid,
    limited: pg_sys::Oid,
    quota: i64,
    written: &[(pg_sys::Oid, i64, i64)],
    in_memory: bool,
) -> Result<()> {
    let (subtree, stored) = registry::as_owner(|| {
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
                row.get::<i64>(2).ctx("stored")?.unwrap_or(0),
            ))
        })
    })?;
    let added: i64 = written.iter().filter(|w| subtree.contains(&w.0)).map(|w| w.1).sum();
    if added <= 0 {
        return Ok(());
    }
    let since = with_transaction(|txn| txn.unwritten_rows(tenant.as_bytes(), &subtree));
    let used = stored + since + if in_memory { added } else { 0 };
    if used > quota {
        // Qualified, as quota keys are stored.
        let key = registry::with_pinned_search_path(|| {
            Spi::get_one_with_args::<String>("SELECT 'rows:' || $1::regclass::text", &[limited.into()])
                .ctx("quotas: key")
        })?
        .unwrap_or_default();
        return Err(exceeded(tenant, &key, used - added, added, quota));
    }
    Ok(())
}

/// Write counted changes to the counters (of tenants this transaction holds).
fn write_unwritten(deltas: Deltas) -> Result<()> {
    for (tenant, tables) in by_tenant(deltas) {
        let id = pgrx::Uuid::from_bytes(tenant);
        for (table, rows, bytes) in tables {
            if let Added::Recounted(_) | Added::NotCounted = add(id, table, rows, bytes)? {
                break;
            }
        }
    }
    Ok(())
}

fn exceeded(tenant: pgrx::Uuid, key: &str, used: i64, adding: i64, quota: i64) -> MtError {
    let slug =
        tenants::lookup(tenants::Key::Id(tenant)).ok().flatten().map(|t| t.slug).unwrap_or_else(|| tenant.to_string());
    MtError::QuotaExceeded { tenant: slug, key: key.to_string(), metered: is_metered(key), used, adding, quota }
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
    let limits = limits_now(tenant)?;
    // Kept only if no registry change arrived meanwhile, and not from an older snapshot.
    if tenants::current_generation() == generation && tenants::lookups_are_current() {
        LIMITS.with(|l| {
            let mut cache = l.borrow_mut();
            if cache.0 == generation && cache.1.len() < 10_000 {
                cache.1.insert(*tenant.as_bytes(), limits.clone());
            }
        });
    }
    Ok(limits)
}

/// The stored counters are about to be set from the tables themselves (all tables, or one):
/// what this transaction counted for them and has not written is in the tables already, so it
/// is cancelled — at the current level, so that a rolled-back savepoint restores it together
/// with the stored counters. The held counters are read again at the next write.
fn cancel_unwritten(table: Option<pg_sys::Oid>, tenant: Option<pgrx::Uuid>) {
    let level = nest_level();
    with_transaction(|txn| {
        for (key, (rows, bytes)) in txn.flattened() {
            let selected = table.is_none_or(|t| t.to_u32() == key.1) && tenant.is_none_or(|t| t.as_bytes() == &key.0);
            if selected && (rows, bytes) != (0, 0) {
                txn.add(level, key, (-rows, -bytes));
            }
        }
        txn.held.clear();
    });
}

/// A table's counters leave with it (TRUNCATE, tenant_disable, DROP).
pub fn forget(table: pg_sys::Oid) -> Result<()> {
    cancel_unwritten(Some(table), None);
    registry::as_owner(|| {
        Spi::run_with_args("SELECT multitenancy._usage_forget_table($1)", &[table.into()]).ctx("quotas::forget")
    })
}

/// Set a table's counters to what it holds (after tenant_enable installed the counting).
pub fn recount(table: pg_sys::Oid) -> Result<()> {
    cancel_unwritten(Some(table), None);
    registry::as_owner(|| {
        Spi::run_with_args("SELECT multitenancy._usage_recount($1)", &[table.into()]).ctx("quotas::recount")
    })
}

/// `_usage_settle(tenant)`: for usage_recompute, which sets every counter from the tables
/// (tenant NULL), and tenant_purge, which removes a tenant's counters.
#[pg_extern(volatile, parallel_unsafe)]
fn _usage_settle(tenant: Option<pgrx::Uuid>) {
    cancel_unwritten(None, tenant)
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
    let key = crate::error::required(key, "key")?.trim();
    if key.len() > 200 {
        return Err(MtError::InvalidArgument {
            message: format!("invalid quota key \"{}\": longer than 200 bytes", crate::error::clip(key)),
            hint:
                "A key is 'members', 'rows', 'bytes', 'rows:<table>' or a metered counter's name such as 'api_calls'."
                    .into(),
        });
    }
    // `rows:<table>` names the table as the caller would (their search_path), and is stored
    // schema-qualified.
    let table = match key.strip_prefix("rows:") {
        Some(name) => {
            Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid", &[name.into()])
                .unwrap_or(None)
        }
        None => None,
    };
    registry::as_owner(|| {
        let sql = "SELECT multitenancy._quota_key(CASE WHEN $2 IS NULL THEN $1 ELSE 'rows:' || $2::pg_catalog.regclass::text END)";
        Spi::get_one_with_args::<String>(sql, &[key.into(), table.into()])
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
        let tenant = crate::tenants::access::tenant(tenant)?;
        crate::tenants::access::change(
            "quota_set",
            Some(tenant.id),
            "SELECT multitenancy._quota_set($1, $2, $3, true)",
            &[tenant.id.into(), key.as_str().into(), quota.into()],
        )
    };
    run().or_raise();
}

/// Remove a tenant's override for `key`: the plan's limit applies again. Audited.
#[pg_extern(volatile, parallel_unsafe)]
fn quota_reset(tenant: Option<&str>, key: Option<&str>) {
    let run = || {
        let key = validate_key(key)?;
        let tenant = crate::tenants::access::tenant(tenant)?;
        crate::tenants::access::change(
            "quota_reset",
            Some(tenant.id),
            "SELECT multitenancy._quota_set($1, $2, NULL, false)",
            &[tenant.id.into(), key.as_str().into()],
        )
    };
    run().or_raise();
}

/// Add `amount` to the current tenant's metered counter `key` for this month (UTC); refuses
/// (53400, nothing counted) when that would pass the tenant's limit. Returns the new total.
#[pg_extern(volatile, parallel_unsafe)]
fn usage_record(key: Option<&str>, amount: default!(Option<i64>, 1)) -> i64 {
    let run = || {
        let amount = crate::error::required(amount, "amount")?;
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

/// Used, quota, and for a metered key the current period's start and end.
type Usage = (Option<i64>, Option<i64>, Option<pgrx::datum::Date>, Option<pgrx::datum::Date>);

/// The current tenant's usage of `key`, as `_usage` reports it.
fn usage_of(key: Option<&str>) -> Result<Usage> {
    let key = validate_key(key)?;
    let tenant = crate::context::current()?;
    registry::as_owner(|| {
        Spi::connect(|client| {
            let row = client
                .select(
                    "SELECT used, quota, period_start, period_end FROM multitenancy._usage($1, $2)",
                    Some(1),
                    &[tenant.into(), key.as_str().into()],
                )
                .ctx("quotas::usage_of")?
                .first();
            Ok((
                row.get::<i64>(1).ctx("used")?,
                row.get::<i64>(2).ctx("quota")?,
                row.get::<pgrx::datum::Date>(3).ctx("period_start")?,
                row.get::<pgrx::datum::Date>(4).ctx("period_end")?,
            ))
        })
    })
}

/// The current tenant's usage of `key`, its limit (NULL: unlimited) and what remains (never
/// below 0; NULL when unlimited).
#[pg_extern(stable, parallel_unsafe)]
fn quota_check(
    key: Option<&str>,
) -> TableIterator<'static, (name!(used, Option<i64>), name!(quota, Option<i64>), name!(remaining, Option<i64>))> {
    let (used, quota, _, _) = usage_of(key).or_raise();
    let remaining = quota.map(|q| (q - used.unwrap_or(0)).max(0));
    TableIterator::once((used, quota, remaining))
}

/// The current tenant's usage of `key` with its limit and, for a metered key, the current
/// period (a calendar month, UTC).
#[pg_extern(stable, parallel_unsafe)]
#[allow(clippy::type_complexity)] // pgrx spells a table's columns in the signature
fn usage_get(
    key: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(used, Option<i64>),
        name!(quota, Option<i64>),
        name!(period_start, Option<pgrx::datum::Date>),
        name!(period_end, Option<pgrx::datum::Date>),
    ),
> {
    TableIterator::once(usage_of(key).or_raise())
}
