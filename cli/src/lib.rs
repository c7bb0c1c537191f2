//! mt-move: export, import, restore, move and consolidate tenants of the multitenancy extension.
//!
//! The program copies rows with COPY over the PostgreSQL protocol; everything that must happen
//! inside a database is the extension's SQL API (`tenant_export`, `tenant_import_begin`,
//! `tenant_import_end`, `move_tables`, `import_check`), run in one transaction per tenant:
//! an import either commits completely or leaves the target unchanged.
//!
//! An archive is a directory: `manifest.json` (the extension's export of the tenant's registry
//! entries and tables, plus per table its file, rows, bytes and SHA-256) and `data/*.csv` (COPY
//! CSV with a header line). The manifest is written last: a directory without one is an
//! incomplete export and is refused. README "Moving tenants" documents the format.
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use postgres::{Client, IsolationLevel, NoTls, Transaction};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Exit codes.
pub const EXIT_OK: i32 = 0;
/// A connection, file or unexpected database error.
pub const EXIT_FAILED: i32 = 1;
/// Bad command line (clap's own code).
pub const EXIT_USAGE: i32 = 2;
/// Refused before anything was written: the archive does not fit, is incomplete or damaged, keys
/// collide, a reference points outside the tenant's rows.
pub const EXIT_REFUSED: i32 = 3;
/// The database refused the import while writing (a quota, a constraint): rolled back.
pub const EXIT_REJECTED: i32 = 4;

#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Failure>;

fn failed(message: impl Into<String>) -> Failure {
    Failure { code: EXIT_FAILED, message: message.into() }
}

fn refused(message: impl Into<String>) -> Failure {
    Failure { code: EXIT_REFUSED, message: message.into() }
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Failure {
        let Some(db) = error.as_db_error() else {
            return failed(format!("database connection: {error}"));
        };
        let code = db.code().code();
        let exit = match &code[..2] {
            // Refused by the extension's checks of the archive (format, version, tables).
            _ if matches!(code, "0A000" | "42P01" | "42804") => EXIT_REFUSED,
            // Quotas, constraints, permissions: the import was refused while writing.
            "53" | "23" | "42" | "28" | "55" => EXIT_REJECTED,
            _ => EXIT_FAILED,
        };
        let mut message = format!("{}: {} (SQLSTATE {code})", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            message += &format!("\nDETAIL: {detail}");
        }
        if let Some(hint) = db.hint() {
            message += &format!("\nHINT: {hint}");
        }
        Failure { code: exit, message }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        failed(format!("file: {error}"))
    }
}

#[derive(Parser)]
#[command(
    name = "mt-move",
    version,
    about = "Export, import, restore, move and consolidate tenants of the multitenancy extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Why (written to the audit log through admin_begin when the role is not a DBA).
    #[arg(long, global = true, default_value = "mt-move")]
    reason: String,
    /// Also write the report (plan and result) as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    report: Option<PathBuf>,
    /// No progress bars (log lines only).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum Ids {
    /// Keep the ids: a key another tenant already uses stops the import before it writes.
    Keep,
    /// Give the rows of global-key tables new ids from their sequences, and rewrite every
    /// foreign key that points at them.
    Remap,
}

#[derive(Subcommand)]
enum Command {
    /// Write one tenant's rows and registry entries to an archive directory.
    Export {
        /// Connection string (postgresql://... or "host=... dbname=...").
        #[arg(long)]
        from: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        archive: PathBuf,
    },
    /// Load an archive: as a new tenant (its slug, or --as), or over an existing one (--replace).
    Import {
        #[arg(long)]
        to: String,
        #[arg(long)]
        archive: PathBuf,
        #[arg(long = "as", value_name = "SLUG")]
        as_slug: Option<String>,
        /// Restore: replace the rows and registry entries of the tenant with the archive's id
        /// (or of the tenant --as names).
        #[arg(long)]
        replace: bool,
        /// Leave the archive's custom domains out (a copy next to the original in one database).
        #[arg(long)]
        skip_domains: bool,
        /// Import only the rows: none of the archive's members, domains, quotas, metered usage,
        /// status or settings (for an archive from outside, e.g. a customer's own export).
        #[arg(long)]
        without_registry: bool,
        /// The plan of the tenant with --without-registry.
        #[arg(long, default_value = "free")]
        plan: String,
        /// Set the tenant's counters from its rows after the import (they are exact anyway; for
        /// counters that drifted before).
        #[arg(long)]
        recount: bool,
        #[arg(long, value_enum, default_value = "keep")]
        ids: Ids,
        /// Check and print the plan; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Suspend at the source, export, import, then purge at the source. Safe to run again.
    Move {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        tenant: String,
        #[arg(long = "as", value_name = "SLUG")]
        as_slug: Option<String>,
        /// Where the archive goes (kept afterwards).
        #[arg(long)]
        archive: PathBuf,
        /// Leave the tenant (suspended) at the source.
        #[arg(long)]
        keep_source: bool,
        #[arg(long, value_enum, default_value = "keep")]
        ids: Ids,
        #[arg(long)]
        dry_run: bool,
    },
    /// Load database-per-tenant or schema-per-tenant sources (tables without tenant_id) into the
    /// target's enabled tables, one tenant per source.
    Consolidate {
        #[arg(long)]
        to: String,
        /// A source database: SLUG=CONNINFO (repeatable).
        #[arg(long = "database", value_name = "SLUG=CONNINFO")]
        databases: Vec<String>,
        /// A source schema of --schemas-from: SLUG=SCHEMA (repeatable).
        #[arg(long = "schema", value_name = "SLUG=SCHEMA")]
        schemas: Vec<String>,
        #[arg(long, value_name = "CONNINFO")]
        schemas_from: Option<String>,
        #[arg(long, value_enum, default_value = "remap")]
        ids: Ids,
        #[arg(long)]
        dry_run: bool,
    },
}

/// Run the program with `args` (the first is the program name); returns the exit code.
pub fn main_with(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let ui = Ui { bars: !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) };
    let mut reports = Vec::new();
    let outcome = run(&cli, &ui, &mut reports);
    if let Some(path) = &cli.report {
        let text = serde_json::to_string_pretty(&Value::Array(reports)).unwrap_or_default();
        if let Err(error) = std::fs::write(path, text) {
            eprintln!("mt-move: cannot write the report {}: {error}", path.display());
        }
    }
    match outcome {
        Ok(()) => EXIT_OK,
        Err(failure) => {
            eprintln!("mt-move: {}", failure.message);
            failure.code
        }
    }
}

fn run(cli: &Cli, ui: &Ui, reports: &mut Vec<Value>) -> Result<()> {
    match &cli.command {
        Command::Export { from, tenant, archive } => {
            let mut client = connect(from)?;
            let manifest = export(&mut client, tenant, archive, &cli.reason, ui)?;
            reports.push(json!({"export": tenant, "archive": archive, "tables": manifest["tables"]}));
            Ok(())
        }
        Command::Import {
            to,
            archive,
            as_slug,
            replace,
            skip_domains,
            without_registry,
            plan,
            recount,
            ids,
            dry_run,
        } => {
            let mut client = connect(to)?;
            let options = Options {
                slug: as_slug.clone(),
                replace: *replace,
                skip_domains: *skip_domains,
                without_registry: without_registry.then(|| plan.clone()),
                recount: *recount,
                ..Options::new(*ids, *dry_run, &cli.reason)
            };
            let report = import_archive(&mut client, archive, &options, ui);
            finish(report, reports)
        }
        Command::Move { from, to, tenant, as_slug, archive, keep_source, ids, dry_run } => {
            let options = Options { slug: as_slug.clone(), ..Options::new(*ids, *dry_run, &cli.reason) };
            let report = move_tenant(from, to, tenant, archive, *keep_source, options, ui);
            finish(report, reports)
        }
        Command::Consolidate { to, databases, schemas, schemas_from, ids, dry_run } => {
            let mut sources = Vec::new();
            for spec in databases {
                let (slug, conninfo) = split_spec(spec, "--database")?;
                sources.push(Source { slug, conninfo, schema: None });
            }
            for spec in schemas {
                let (slug, schema) = split_spec(spec, "--schema")?;
                let conninfo = schemas_from
                    .clone()
                    .ok_or_else(|| Failure { code: EXIT_USAGE, message: "--schema needs --schemas-from".into() })?;
                sources.push(Source { slug, conninfo, schema: Some(schema) });
            }
            let options = Options::new(*ids, *dry_run, &cli.reason);
            let mut target = connect(to)?;
            let mut failure = None;
            for source in &sources {
                ui.log(&format!("consolidate: {} -> tenant {}", source.describe(), source.slug));
                match consolidate_one(&mut target, source, &options, ui) {
                    Ok(report) => reports.push(report),
                    Err((report, error)) => {
                        reports.extend(report);
                        failure = Some(error);
                        break;
                    }
                }
            }
            failure.map_or(Ok(()), Err)
        }
    }
}

fn finish(report: std::result::Result<Value, (Option<Value>, Failure)>, reports: &mut Vec<Value>) -> Result<()> {
    match report {
        Ok(report) => {
            reports.push(report);
            Ok(())
        }
        Err((report, failure)) => {
            reports.extend(report);
            Err(failure)
        }
    }
}

fn split_spec(spec: &str, flag: &str) -> Result<(String, String)> {
    match spec.split_once('=') {
        Some((slug, rest)) if !slug.is_empty() && !rest.is_empty() => Ok((slug.to_string(), rest.to_string())),
        _ => Err(Failure { code: EXIT_USAGE, message: format!("{flag} wants SLUG=VALUE, got \"{spec}\"") }),
    }
}

// ---------------------------------------------------------------------------------------------
// Output

pub struct Ui {
    bars: bool,
}

impl Ui {
    fn log(&self, line: &str) {
        eprintln!("mt-move: {line}");
    }

    /// A bar for one table: rows (with ETA) when the total is known, else a spinner.
    fn bar(&self, what: &str, total: Option<u64>) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg:28} {bar:30} {human_pos}/{human_len} rows {prefix} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:28} {spinner} {human_pos} rows {prefix} {per_sec} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_message(what.to_string());
        bar
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Connect with a libpq-style connection string (URL or key=value). PGHOST, PGPORT, PGUSER,
/// PGPASSWORD and PGDATABASE fill what the string leaves out. Every statement of the program
/// is schema-qualified; the search path is pinned anyway.
pub fn connect(conninfo: &str) -> Result<Client> {
    let mut config: postgres::Config = conninfo
        .parse()
        .map_err(|e| Failure { code: EXIT_USAGE, message: format!("invalid connection string: {e}") })?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(host) if host.starts_with('/') => config.host_path(host),
            Some(host) => config.host(&host),
            None => config.host_path("/var/run/postgresql"),
        };
    }
    if config.get_ports().is_empty() {
        if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = env("PGUSER").or_else(|| env("USER")).unwrap_or_else(|| "postgres".into());
        config.user(&user);
    }
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(db) = env("PGDATABASE") {
            config.dbname(&db);
        }
    }
    config.application_name("mt-move");
    config.options("-c search_path=pg_catalog,pg_temp");
    config
        .connect(NoTls)
        .map_err(|e| failed(format!("cannot connect ({conninfo_shown}): {e}", conninfo_shown = shown(conninfo))))
}

/// A connection string as it may be shown (logs, reports): host, port, database and user,
/// never the password, whatever form the string had.
pub fn shown(conninfo: &str) -> String {
    let Ok(config) = conninfo.parse::<postgres::Config>() else {
        return "(unparsable connection string)".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            // (A password with an unescaped '@' would otherwise show in the host.)
            postgres::config::Host::Tcp(name) => name.rsplit('@').next().unwrap_or_default().to_string(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", hosts.join(",")));
    }
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    parts.join(" ")
}

/// Operators: superusers and members of the extension's owner act as themselves; members of
/// multitenancy_admin enter audited admin write mode for the transaction.
fn become_operator(t: &mut Transaction<'_>, reason: &str) -> Result<()> {
    operator(t, reason, true)
}

/// [`become_operator`] for a transaction that only reads: read-only admin mode, or a read-only
/// transaction for DBAs — whatever code runs while it reads enabled tables (a table owner's
/// policy functions run as the reader) can write nothing.
fn become_reader(t: &mut Transaction<'_>, reason: &str) -> Result<()> {
    operator(t, reason, false)
}

fn operator(t: &mut Transaction<'_>, reason: &str, write: bool) -> Result<()> {
    // Every name in the program's SQL is qualified or from the catalog; the search path is
    // pinned anyway, also where a pooler dropped the connection's startup options.
    t.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")?;
    let row = t.query_opt(
        "SELECT r.rolsuper OR pg_catalog.pg_has_role(e.extowner, 'USAGE') \
           FROM pg_catalog.pg_roles r, pg_catalog.pg_extension e \
          WHERE r.rolname OPERATOR(pg_catalog.=) current_user AND e.extname OPERATOR(pg_catalog.=) 'multitenancy'",
        &[],
    )?;
    let Some(row) = row else {
        return Err(refused("the multitenancy extension is not installed in this database"));
    };
    if !row.get::<_, bool>(0) {
        t.execute("SELECT multitenancy.admin_begin($1, $2)", &[&reason, &write])?;
    } else if !write {
        t.batch_execute("SET LOCAL transaction_read_only = on")?;
    }
    Ok(())
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_names(table: &Value) -> Vec<String> {
    table["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Counting and hashing streams

/// Counts CSV records (newlines outside quotes) and bytes, hashes, and moves a progress bar.
pub struct Meter {
    in_quote: bool,
    newlines: u64,
    bytes: u64,
    hash: Sha256,
    bar: ProgressBar,
}

impl Meter {
    fn new(bar: ProgressBar) -> Meter {
        Meter { in_quote: false, newlines: 0, bytes: 0, hash: Sha256::new(), bar }
    }

    fn feed(&mut self, buf: &[u8]) {
        let before = self.newlines;
        for at in memchr::memchr2_iter(b'"', b'\n', buf) {
            if buf[at] == b'"' {
                self.in_quote = !self.in_quote;
            } else if !self.in_quote {
                self.newlines += 1;
            }
        }
        self.bytes += buf.len() as u64;
        self.hash.update(buf);
        self.bar.inc(self.newlines - before);
        if !self.bar.is_hidden() {
            self.bar.set_prefix(format!("{}", indicatif::HumanBytes(self.bytes)));
        }
    }

    /// Data rows (the header line is not one).
    fn rows(&self) -> u64 {
        self.newlines.saturating_sub(1)
    }

    fn digest(&self) -> String {
        self.hash.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Copy `from` into `to` through a meter.
fn pump(from: &mut dyn Read, to: &mut dyn Write, meter: &mut Meter) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf).map_err(|e| failed(format!("reading: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        meter.feed(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| failed(format!("writing: {e}")))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Export

/// Export `tenant` into the archive directory `dir` (which must not hold an archive yet), in one
/// REPEATABLE READ transaction: the tables are a consistent picture. Returns the manifest.
pub fn export(client: &mut Client, tenant: &str, dir: &Path, reason: &str, ui: &Ui) -> Result<Value> {
    export_with(client, tenant, dir, reason, ui, None)
}

/// [`export`]; a move records the tenant's status before it suspended it.
fn export_with(
    client: &mut Client,
    tenant: &str,
    dir: &Path,
    reason: &str,
    ui: &Ui,
    moved_from_status: Option<&str>,
) -> Result<Value> {
    if dir.join("manifest.json").exists() {
        return Err(refused(format!("{} already holds an archive (manifest.json)", dir.display())));
    }
    std::fs::create_dir_all(dir.join("data"))?;
    let mut t = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start()?;
    become_operator(&mut t, reason)?;
    let mut manifest: Value = t.query_one("SELECT multitenancy.tenant_export($1)", &[&tenant])?.get(0);
    let archive_id: String = t.query_one("SELECT pg_catalog.gen_random_uuid()::text", &[])?.get(0);
    let tables = manifest["tables"].as_array().cloned().unwrap_or_default();
    let mut written = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let name = table["name"].as_str().unwrap_or_default().to_string();
        let columns = column_names(table);
        let file = format!("data/{:03}_{}.csv", i + 1, name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let expected: i64 = t
            .query_one(
                "SELECT coalesce(sum(u.row_count), 0)::bigint \
                   FROM multitenancy._usage_report(multitenancy.current_tenant_id()) u \
                  WHERE u.tenant_id OPERATOR(pg_catalog.=) multitenancy.current_tenant_id() \
                    AND u.relid::oid IN (SELECT pg_catalog.to_regclass($1)::oid UNION ALL \
                                SELECT p.relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass($1)) p)",
                &[&name],
            )?
            .get(0);
        // The table name is the server's own regclass output (quoted as needed), the columns
        // are quoted here.
        let sql = format!(
            "COPY (SELECT {} FROM {name} WHERE tenant_id OPERATOR(pg_catalog.=) multitenancy.current_tenant_id()) \
             TO STDOUT (FORMAT csv, HEADER)",
            columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
        );
        let mut meter = Meter::new(ui.bar(&name, Some(expected.max(0) as u64)));
        let mut out = BufWriter::new(std::fs::File::create(dir.join(&file))?);
        let mut reader = t.copy_out(&sql)?;
        pump(&mut reader, &mut out, &mut meter)?;
        drop(reader);
        out.flush()?;
        out.into_inner().map_err(|e| failed(format!("file: {e}")))?.sync_all()?;
        meter.bar.finish_and_clear();
        ui.log(&format!("exported {name}: {} rows, {} bytes", meter.rows(), meter.bytes));
        let mut entry = table.clone();
        entry["file"] = json!(file);
        entry["rows"] = json!(meter.rows());
        entry["bytes"] = json!(meter.bytes);
        entry["sha256"] = json!(meter.digest());
        written.push(entry);
    }
    t.commit()?;
    manifest["tables"] = Value::Array(written);
    manifest["archive_id"] = json!(archive_id);
    manifest["written_by"] = json!(format!("mt-move {}", env!("CARGO_PKG_VERSION")));
    if let Some(status) = moved_from_status {
        manifest["moved_from_status"] = json!(status);
    }
    let tmp = dir.join("manifest.json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&manifest).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("manifest.json"))?;
    Ok(manifest)
}

/// Read an archive's manifest; a directory without one is an incomplete export.
pub fn read_manifest(dir: &Path) -> Result<Value> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        refused(format!(
            "{} is not a complete archive: {} ({e}); an interrupted export leaves no manifest — export again",
            dir.display(),
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| refused(format!("{}: not a manifest: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// Import

pub struct Options {
    pub slug: Option<String>,
    pub replace: bool,
    pub ids: Ids,
    pub dry_run: bool,
    pub reason: String,
    /// Activate the tenant after the import (a move of an active tenant, suspended at its source).
    pub activate: bool,
    /// Leave the archive's custom domains out.
    pub skip_domains: bool,
    /// Apply none of the archive's registry entries (members, domains, quotas, metered usage,
    /// status, settings); the tenant gets this plan.
    pub without_registry: Option<String>,
    /// Set the tenant's counters from its rows at the end (`tenant_import_end(recount => true)`).
    pub recount: bool,
}

impl Options {
    /// A new tenant from the archive as it is, ids as `ids`.
    pub fn new(ids: Ids, dry_run: bool, reason: &str) -> Options {
        Options {
            slug: None,
            replace: false,
            ids,
            dry_run,
            reason: reason.to_string(),
            activate: false,
            skip_domains: false,
            without_registry: None,
            recount: false,
        }
    }
}

/// A target table as `move_tables()` describes it.
struct Target {
    name: String,
    columns: Vec<String>,
    remap_column: Option<String>,
    remap_sequence: Option<String>,
    /// (column, referenced table, referenced column)
    refs: Vec<(String, String, String)>,
}

fn targets(t: &mut Transaction<'_>) -> Result<Vec<Target>> {
    let rows = t.query(
        "SELECT table_name::text, columns, remap_column, remap_sequence::text, refs \
           FROM multitenancy.move_tables() ORDER BY load_order",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let columns: Value = r.get(1);
            let refs: Value = r.get(4);
            Target {
                name: r.get(0),
                columns: column_names(&json!({ "columns": columns })),
                remap_column: r.get(2),
                remap_sequence: r.get(3),
                refs: fields(&refs, ["column", "table", "ref_column"]).into_iter().map(|[c, t, r]| (c, t, r)).collect(),
            }
        })
        .collect())
}

/// The string fields `keys` of every object in the JSON array `array` ("" where absent).
fn fields<const N: usize>(array: &Value, keys: [&str; N]) -> Vec<[String; N]> {
    array
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| keys.map(|k| x[k].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Where an import's rows come from: writes table `index` of the manifest as COPY CSV (with a
/// header) into the writer.
pub type Feed<'a> = dyn FnMut(usize, &Value, &mut dyn Write, &mut Meter) -> Result<()> + 'a;

/// Import the archive in `dir`.
pub fn import_archive(
    client: &mut Client,
    dir: &Path,
    options: &Options,
    ui: &Ui,
) -> std::result::Result<Value, (Option<Value>, Failure)> {
    let mut manifest = read_manifest(dir).map_err(|e| (None, e))?;
    if options.skip_domains {
        manifest["domains"] = json!([]);
    }
    if let Some(plan) = &options.without_registry {
        // Only the rows: the tenant gets a name, a slug and the plan the operator chose.
        for key in ["members", "domains", "quotas", "metered_usage"] {
            manifest[key] = json!([]);
        }
        let tenant = &manifest["tenant"];
        manifest["tenant"] = json!({"id": tenant["id"], "slug": tenant["slug"], "name": tenant["name"], "plan": plan});
    }
    // Every file is named, counted and hashed by the manifest, and lies inside the archive
    // (a symbolic link out of it is refused).
    let root = std::fs::canonicalize(dir).map_err(|e| (None, refused(format!("{}: {e}", dir.display()))))?;
    for table in manifest["tables"].as_array().into_iter().flatten() {
        let name = table["name"].as_str().unwrap_or("?");
        if table["file"].as_str().is_none() || table["rows"].as_u64().is_none() || table["sha256"].as_str().is_none() {
            return Err((None, refused(format!("manifest entry of {name} lacks its file, rows or sha256"))));
        }
    }
    let mut feed = move |_i: usize, table: &Value, out: &mut dyn Write, meter: &mut Meter| -> Result<()> {
        let file = table["file"].as_str().unwrap_or_default();
        let path = std::fs::canonicalize(root.join(file)).map_err(|e| refused(format!("archive file {file}: {e}")))?;
        if !path.starts_with(&root) || !std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            return Err(refused(format!("manifest names {file}, which is not a file inside the archive")));
        }
        let mut reader =
            BufReader::new(std::fs::File::open(&path).map_err(|e| refused(format!("archive file {file}: {e}")))?);
        pump(&mut reader, out, meter)?;
        if table["sha256"].as_str() != Some(meter.digest().as_str()) {
            return Err(refused(format!("archive file {file} is damaged (its SHA-256 differs from the manifest's)")));
        }
        Ok(())
    };
    import(client, &manifest, options, ui, &mut feed)
}

/// Import one tenant's rows (from `feed`) as `manifest` describes them, in one transaction.
/// Returns the report: the plan (tables in load order, rows, remapped ids, collisions) and,
/// unless a dry run, what was written.
pub fn import(
    client: &mut Client,
    manifest: &Value,
    options: &Options,
    ui: &Ui,
    feed: &mut Feed<'_>,
) -> std::result::Result<Value, (Option<Value>, Failure)> {
    let mut report = json!({
        "tenant": options.slug.clone().or_else(|| manifest["tenant"]["slug"].as_str().map(str::to_string)),
        "mode": if options.replace { "replace" } else { "new" },
        "ids": format!("{:?}", options.ids).to_lowercase(),
        "dry_run": options.dry_run,
        "tables": [],
        "collisions": 0,
    });
    let result = import_in(client, manifest, options, ui, feed, &mut report);
    match result {
        Ok(()) => Ok(report),
        Err(failure) => {
            report["error"] = json!(failure.message);
            Err((Some(report), failure))
        }
    }
}

fn import_in(
    client: &mut Client,
    manifest: &Value,
    options: &Options,
    ui: &Ui,
    feed: &mut Feed<'_>,
    report: &mut Value,
) -> Result<()> {
    let mut t = client.transaction()?;
    become_operator(&mut t, &options.reason)?;
    let mode = if options.replace { "replace" } else { "new" };
    let tenant: String = t
        .query_one("SELECT multitenancy.tenant_import_begin($1, $2, $3)::text", &[manifest, &options.slug, &mode])?
        .get(0);
    ui.log(&format!("importing into tenant {} ({mode})", tenant));
    let targets = targets(&mut t)?;
    let archive_tables = manifest["tables"].as_array().cloned().unwrap_or_default();
    // Stage every table of the archive (COPY into a temporary table).
    let mut staged: Vec<(usize, usize, Vec<String>, u64)> = Vec::new(); // (archive index, target index, columns, rows)
    for (i, table) in archive_tables.iter().enumerate() {
        let name = table["name"].as_str().unwrap_or_default();
        let Some(ti) = targets.iter().position(|x| x.name == name) else {
            return Err(refused(format!("table {name} of the archive is not an enabled table of the target")));
        };
        let columns: Vec<String> = column_names(table);
        if let Some(c) = columns.iter().find(|c| !targets[ti].columns.contains(c)) {
            return Err(refused(format!("column {c} of {name} is not in the target table")));
        }
        // Staged as text: no type's code runs as the importer; tenant_import_rows casts each
        // value to its column's type as the table's owner.
        let list = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let defs = columns.iter().map(|c| format!("{} text", quote_ident(c))).collect::<Vec<_>>().join(", ");
        t.batch_execute(&format!("CREATE TEMPORARY TABLE mt_stage_{i} ({defs}) ON COMMIT DROP"))?;
        let expected = table["rows"].as_u64();
        let mut meter = Meter::new(ui.bar(name, expected));
        let mut writer = t.copy_in(&format!("COPY mt_stage_{i} ({list}) FROM STDIN (FORMAT csv, HEADER)"))?;
        feed(i, table, &mut writer, &mut meter)?;
        let rows = writer.finish()?;
        meter.bar.finish_and_clear();
        if expected.is_some_and(|e| e != rows) {
            return Err(refused(format!(
                "{name}: the archive's file holds {rows} rows, its manifest says {}",
                expected.unwrap_or(0)
            )));
        }
        ui.log(&format!("staged {name}: {rows} rows, {} bytes", meter.bytes));
        staged.push((i, ti, columns, rows));
    }
    staged.sort_by_key(|s| s.1);
    // A staged table is remapped when its remappable key is among its columns.
    let remapped = |ti: usize, columns: &Vec<String>| -> bool {
        remappable(&targets[ti], options) && targets[ti].remap_column.as_ref().is_some_and(|c| columns.contains(c))
    };
    // The plan: per table, rows, remapping and keys another tenant already has.
    let mut total_collisions = 0i64;
    let mut plan = Vec::new();
    for (order, (i, ti, columns, rows)) in staged.iter().enumerate() {
        let target = &targets[*ti];
        let remap = remapped(*ti, columns);
        // Keys another tenant already has, checked by the extension as the table's owner.
        let skip = if remap { target.remap_column.clone() } else { None };
        let mut collisions = 0i64;
        let mut examples = Vec::<String>::new();
        for row in t.query(
            "SELECT key, collisions, examples FROM multitenancy.tenant_import_keys(pg_catalog.to_regclass($1), \
                    pg_catalog.to_regclass($2), $3)",
            &[&target.name, &format!("pg_temp.mt_stage_{i}"), &skip],
        )? {
            let key: String = row.get(0);
            collisions += row.get::<_, i64>(1);
            let found: Vec<Option<String>> = row.get(2);
            examples.extend(found.into_iter().flatten().map(|v| format!("({key}) = ({v})")));
        }
        total_collisions += collisions;
        plan.push(json!({
            "order": order + 1,
            "table": target.name,
            "rows": rows,
            "remap": remap,
            "remap_column": if remap { target.remap_column.clone() } else { None },
            "collisions": collisions,
            "collision_examples": examples,
        }));
    }
    report["tables"] = Value::Array(plan.clone());
    report["collisions"] = json!(total_collisions);
    report["tenant_id"] = json!(tenant);
    for p in &plan {
        ui.log(&format!(
            "plan: {} {}: {} rows{}{}",
            p["order"],
            p["table"].as_str().unwrap_or_default(),
            p["rows"],
            if p["remap"] == json!(true) { ", ids remapped" } else { "" },
            if p["collisions"] != json!(0) {
                format!(", {} keys taken by other rows", p["collisions"])
            } else {
                String::new()
            }
        ));
    }
    if total_collisions > 0 {
        t.rollback()?;
        let examples: Vec<String> = plan
            .iter()
            .flat_map(|p| {
                let table = p["table"].as_str().unwrap_or_default().to_string();
                p["collision_examples"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |e| format!("{table}: {}", e.as_str().unwrap_or_default()))
            })
            .collect();
        return Err(refused(format!(
            "{total_collisions} key(s) of the source are taken in the target (nothing was written): {}; \
             import with --ids remap to give global-key rows new ids",
            examples.join("; ")
        )));
    }
    if options.dry_run {
        t.rollback()?;
        ui.log("dry run: nothing was written");
        return Ok(());
    }
    // Remapping: old id -> new id from the table's sequence, for every table that is remapped.
    let mut maps: Vec<Option<usize>> = vec![None; targets.len()]; // target index -> archive index of its map
    for (i, ti, columns, _) in &staged {
        if remapped(*ti, columns) {
            let target = &targets[*ti];
            let column = quote_ident(target.remap_column.as_deref().unwrap_or_default());
            // New ids come after every id the table holds (a sequence can lag behind rows
            // written with explicit ids).
            t.execute("SELECT multitenancy.tenant_import_sequences(pg_catalog.to_regclass($1))", &[&target.name])?;
            t.batch_execute(&format!(
                "CREATE TEMPORARY TABLE mt_map_{i} (old_id bigint PRIMARY KEY, new_id bigint NOT NULL) ON COMMIT DROP"
            ))?;
            t.execute(
                &format!(
                    "INSERT INTO mt_map_{i} SELECT s.{column}::bigint, pg_catalog.nextval(pg_catalog.to_regclass($1)) \
                       FROM mt_stage_{i} s ORDER BY s.{column}::bigint"
                ),
                &[&target.remap_sequence],
            )?;
            maps[*ti] = Some(*i);
        }
    }
    // Rewrite the staged ids through the maps (every map was made from the ids as staged).
    for (i, ti, columns, _) in &staged {
        let target = &targets[*ti];
        for column in columns {
            let q = quote_ident(column);
            let referenced = target.refs.iter().find_map(|(c, table, _)| {
                (c == column)
                    .then(|| targets.iter().position(|x| &x.name == table))
                    .flatten()
                    .filter(|r| maps[*r].is_some() || remappable(&targets[*r], options))
            });
            let map = match referenced {
                Some(r) => Some((r, maps[r])),
                None if maps[*ti].is_some() && target.remap_column.as_deref() == Some(column.as_str()) => {
                    Some((*ti, maps[*ti]))
                }
                None => None,
            };
            let Some((r, map)) = map else { continue };
            let dangling: i64 = match map {
                Some(m) => t
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM mt_stage_{i} s WHERE s.{q} IS NOT NULL \
                               AND NOT EXISTS (SELECT 1 FROM mt_map_{m} m WHERE m.old_id = s.{q}::bigint)"
                        ),
                        &[],
                    )?
                    .get(0),
                None => {
                    t.query_one(&format!("SELECT count(*) FROM mt_stage_{i} s WHERE s.{q} IS NOT NULL"), &[])?.get(0)
                }
            };
            if dangling > 0 {
                return Err(refused(format!(
                    "{}: {dangling} row(s) reference {} rows that are not in the source (column {column})",
                    target.name, targets[r].name
                )));
            }
            if let Some(m) = map {
                t.execute(
                    &format!("UPDATE mt_stage_{i} s SET {q} = m.new_id::text FROM mt_map_{m} m WHERE m.old_id = s.{q}::bigint"),
                    &[],
                )?;
            }
        }
    }
    let mut written = Vec::new();
    for (i, ti, _, _) in &staged {
        let target = &targets[*ti];
        let bar = ui.bar(&format!("insert {}", target.name), None);
        // As the table's owner, through the tenant's row level security (the extension's
        // sanctioned write path).
        let n: i64 = t
            .query_one(
                "SELECT multitenancy.tenant_import_rows(pg_catalog.to_regclass($1), pg_catalog.to_regclass($2))",
                &[&target.name, &format!("pg_temp.mt_stage_{i}")],
            )?
            .get(0);
        bar.finish_and_clear();
        ui.log(&format!("inserted {}: {n} rows", target.name));
        // Sequences past every id in the table.
        t.execute("SELECT multitenancy.tenant_import_sequences(pg_catalog.to_regclass($1))", &[&target.name])?;
        written.push((target.name.clone(), n as u64));
    }
    let end = t.query(
        "SELECT table_name, row_count, byte_count FROM multitenancy.tenant_import_end($1)",
        &[&options.recount],
    )?;
    if options.activate {
        let status: String =
            t.query_one("SELECT status FROM multitenancy.tenants WHERE id = $1::text::uuid", &[&tenant])?.get(0);
        if status != "active" {
            t.execute("SELECT multitenancy.tenant_activate($1)", &[&tenant])?;
        }
    }
    t.commit()?;
    report["written"] = Value::Array(written.iter().map(|(table, n)| json!({"table": table, "rows": n})).collect());
    report["counters"] = Value::Array(
        end.iter()
            .map(|r| json!({"table": r.get::<_, String>(0), "rows": r.get::<_, i64>(1), "bytes": r.get::<_, i64>(2)}))
            .collect(),
    );
    ui.log(&format!("imported tenant {}", tenant));
    Ok(())
}

/// Whether this import gives the table's rows new ids (its map is empty when the archive has no
/// rows of it: every reference to it then dangles).
fn remappable(target: &Target, options: &Options) -> bool {
    options.ids == Ids::Remap && target.remap_column.is_some() && target.remap_sequence.is_some()
}

// ---------------------------------------------------------------------------------------------
// Move

/// Move `tenant` from one database to another: suspend it at the source (no writes are lost),
/// export, import (activating it there if it was active), purge it at the source. Each step is
/// skipped when a previous run did it, so running the command again after a failure finishes
/// the move.
pub fn move_tenant(
    from: &str,
    to: &str,
    tenant: &str,
    dir: &Path,
    keep_source: bool,
    mut options: Options,
    ui: &Ui,
) -> std::result::Result<Value, (Option<Value>, Failure)> {
    let plain = |e: Failure| (None, e);
    let mut source = connect(from).map_err(plain)?;
    let pg = |e: postgres::Error| (None, Failure::from(e));
    // The tenant at the source: (id, slug, status), if it is still there.
    let at_source = |source: &mut Client| -> Result<Option<(String, String, String)>> {
        let mut t = source.transaction()?;
        become_reader(&mut t, &options.reason)?;
        let row = t.query_opt(
            "SELECT id::text, slug, status FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1",
            &[&tenant],
        )?;
        t.rollback()?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    };
    let manifest = if dir.join("manifest.json").exists() {
        let manifest = read_manifest(dir).map_err(plain)?;
        // Only an archive this command wrote after suspending the tenant, of this very tenant
        // (slug and id), with the tenant still suspended since: anything else could lose rows
        // written after it, or purge another tenant.
        if manifest["moved_from_status"].as_str().is_none() {
            return Err(plain(refused(format!(
                "{} holds an archive that mt-move move did not write; a move exports the tenant itself after \
                 suspending it — give it another --archive directory",
                dir.display()
            ))));
        }
        let (id, slug) =
            (manifest["tenant"]["id"].as_str().unwrap_or(""), manifest["tenant"]["slug"].as_str().unwrap_or(""));
        match at_source(&mut source).map_err(plain)? {
            Some((sid, sslug, status)) => {
                if sid != id || sslug != slug {
                    return Err(plain(refused(format!(
                        "{} holds an archive of tenant {slug} ({id}), and the source's {tenant} is {sslug} ({sid})",
                        dir.display()
                    ))));
                }
                if status != "suspended" {
                    return Err(plain(refused(format!(
                        "tenant {sslug} is {status} at the source: it may have changed since the archive was written; \
                         move it with a new --archive directory"
                    ))));
                }
            }
            None if tenant != slug && tenant != id => {
                return Err(plain(refused(format!("{} holds an archive of another tenant ({slug})", dir.display()))));
            }
            None => {}
        }
        ui.log("archive already complete: export skipped");
        manifest
    } else {
        if options.dry_run {
            return Err(plain(refused(
                "a dry run of a move needs the archive: run mt-move export first, or drop --dry-run",
            )));
        }
        let status = at_source(&mut source).map_err(plain)?.map(|s| s.2);
        let Some(status) = status else {
            return Err(plain(refused(format!("tenant {tenant} does not exist at the source"))));
        };
        if status == "active" {
            let mut t = source.transaction().map_err(pg)?;
            become_operator(&mut t, &options.reason).map_err(plain)?;
            t.execute("SELECT multitenancy.tenant_suspend($1, $2)", &[&tenant, &format!("moving: {}", options.reason)])
                .map_err(pg)?;
            t.commit().map_err(pg)?;
        }
        let from = if status == "active" { "active" } else { status.as_str() };
        export_with(&mut source, tenant, dir, &options.reason, ui, Some(from)).map_err(plain)?
    };
    options.activate = manifest["moved_from_status"].as_str() == Some("active");
    let mut target = connect(to).map_err(plain)?;
    let archive_id = manifest["archive_id"].as_str().unwrap_or_default().to_string();
    let done = {
        let mut t = target.transaction().map_err(|e| plain(e.into()))?;
        become_reader(&mut t, &options.reason).map_err(plain)?;
        let n: i64 = t
            .query_one(
                "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'tenant_import' AND details->>'archive' = $1",
                &[&archive_id],
            )
            .map_err(|e| plain(e.into()))?
            .get(0);
        t.rollback().map_err(|e| plain(e.into()))?;
        n > 0
    };
    let mut report = if done {
        ui.log("archive already imported at the target: import skipped");
        json!({"tenant": tenant, "imported": "earlier"})
    } else {
        import_archive(&mut target, dir, &options, ui)?
    };
    if options.dry_run {
        return Ok(report);
    }
    if !keep_source {
        let mut t = source.transaction().map_err(|e| plain(e.into()))?;
        become_operator(&mut t, &options.reason).map_err(plain)?;
        let id: Option<String> = t
            .query_opt(
                "SELECT id::text FROM multitenancy.tenants WHERE id::text = $1",
                &[&manifest["tenant"]["id"].as_str()],
            )
            .map_err(|e| plain(e.into()))?
            .map(|r| r.get(0));
        if let Some(id) = id {
            let (slug, status): (String, String) = {
                let r = t
                    .query_one("SELECT slug, status FROM multitenancy.tenants WHERE id::text = $1", &[&id])
                    .map_err(|e| plain(e.into()))?;
                (r.get(0), r.get(1))
            };
            // Purge only what the archive holds: the tenant still suspended, and as many rows in
            // every table as the archive has.
            if status != "suspended" {
                return Err((
                    Some(report),
                    refused(format!("tenant {slug} is {status} at the source, not suspended: not purged")),
                ));
            }
            let tables = t
                .query("SELECT table_name::text FROM multitenancy.move_tables() ORDER BY load_order", &[])
                .map_err(|e| plain(e.into()))?;
            for row in tables {
                let name: String = row.get(0);
                let archived = manifest["tables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["name"].as_str() == Some(name.as_str()))
                    .and_then(|x| x["rows"].as_i64())
                    .unwrap_or(0);
                // From the tenant's usage (its counters, or counted now by the registry owner;
                // reading the table as the mover would run its owner's policies).
                let now: i64 = t
                    .query_one(
                        "SELECT coalesce(sum(u.row_count), 0)::bigint \
                           FROM multitenancy._usage_report($1::text::uuid) u \
                          WHERE u.tenant_id = $1::text::uuid \
                            AND u.relid::oid IN (SELECT pg_catalog.to_regclass($2)::oid UNION ALL \
                                SELECT p.relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass($2)) p)",
                        &[&id, &name],
                    )
                    .map_err(|e| plain(e.into()))?
                    .get(0);
                if now != archived {
                    return Err((
                        Some(report),
                        refused(format!(
                            "{name} holds {now} rows of tenant {slug} at the source and the archive {archived}: not purged"
                        )),
                    ));
                }
            }
            t.execute("SELECT multitenancy.tenant_delete($1)", &[&id]).map_err(|e| plain(e.into()))?;
            let purged: i64 = t
                .query_one("SELECT multitenancy.tenant_purge($1, $2)", &[&id, &slug])
                .map_err(|e| plain(e.into()))?
                .get(0);
            t.commit().map_err(|e| plain(e.into()))?;
            ui.log(&format!("purged tenant {slug} at the source: {purged} rows"));
            report["source_rows_purged"] = json!(purged);
        } else {
            ui.log("tenant already gone at the source");
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Consolidate

pub struct Source {
    pub slug: String,
    pub conninfo: String,
    /// Schema-per-tenant: the source schema; database-per-tenant: None (same schema names as the
    /// target's tables).
    pub schema: Option<String>,
}

impl Source {
    fn describe(&self) -> String {
        match &self.schema {
            Some(schema) => format!("schema {schema} of {}", shown(&self.conninfo)),
            None => format!("database {}", shown(&self.conninfo)),
        }
    }
}

/// Load one source database or schema as a new tenant.
pub fn consolidate_one(
    target: &mut Client,
    source: &Source,
    options: &Options,
    ui: &Ui,
) -> std::result::Result<Value, (Option<Value>, Failure)> {
    let plain = |e: Failure| (None, e);
    let pg = |e: postgres::Error| (None, Failure::from(e));
    // The target's tables, and the extension version the manifest claims.
    let (tables, version) = {
        let mut t = target.transaction().map_err(pg)?;
        become_reader(&mut t, &options.reason).map_err(plain)?;
        let rows = t
            .query(
                "SELECT m.table_name::text, n.nspname::text, c.relname::text FROM multitenancy.move_tables() m \
                   JOIN pg_catalog.pg_class c ON c.oid = m.table_name JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  ORDER BY m.load_order",
                &[],
            )
            .map_err(pg)?;
        let version: String = t
            .query_one("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'multitenancy'", &[])
            .map_err(pg)?
            .get(0);
        t.rollback().map_err(pg)?;
        (
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
                .collect::<Vec<_>>(),
            version,
        )
    };
    let mut src = connect(&source.conninfo).map_err(plain)?;
    let mut s =
        src.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().map_err(pg)?;
    // Which source table each target table reads, and its columns.
    let mut manifest_tables = Vec::new();
    let mut sources = Vec::new();
    let mut schemas = std::collections::BTreeSet::new();
    for (name, schema, relname) in &tables {
        let schema = source.schema.clone().unwrap_or_else(|| schema.clone());
        schemas.insert(schema.clone());
        let found = s
            .query_opt(
                "SELECT c.oid::pg_catalog.regclass::text, c.oid FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, relname],
            )
            .map_err(pg)?;
        let Some(found) = found else { continue };
        let (qualified, oid): (String, postgres::types::Oid) = (found.get(0), found.get(1));
        let columns = s
            .query(
                "SELECT pg_catalog.jsonb_build_object('name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod)) \
                   FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                    AND a.attname <> 'tenant_id' ORDER BY a.attnum",
                &[&oid],
            )
            .map_err(pg)?
            .iter()
            .map(|r| r.get::<_, Value>(0))
            .collect::<Vec<_>>();
        manifest_tables.push(json!({"name": name, "columns": columns}));
        sources.push(qualified);
    }
    // Source tables that no enabled table of the target takes would be lost: refuse.
    let mut unplaced = Vec::new();
    for schema in &schemas {
        for row in s
            .query(
                "SELECT c.oid::pg_catalog.regclass::text, c.relname::text FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
                &[schema],
            )
            .map_err(pg)?
        {
            let relname: String = row.get(1);
            if !tables.iter().any(|(_, _, r)| *r == relname) {
                unplaced.push(row.get::<_, String>(0));
            }
        }
    }
    if !unplaced.is_empty() {
        return Err(plain(refused(format!(
            "source {}: table(s) {} have no tenant-enabled table of the same name in the target; their rows would be lost",
            source.describe(),
            unplaced.join(", ")
        ))));
    }
    let manifest = json!({
        "format": 1,
        "extension_version": version,
        "tenant": {"slug": source.slug, "name": source.slug},
        "tables": manifest_tables,
    });
    let mut feed = |i: usize, table: &Value, out: &mut dyn Write, meter: &mut Meter| -> Result<()> {
        let columns = column_names(table).iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let mut reader =
            s.copy_out(&format!("COPY (SELECT {columns} FROM {}) TO STDOUT (FORMAT csv, HEADER)", sources[i]))?;
        pump(&mut reader, out, meter)
    };
    let mut report = import(target, &manifest, options, ui, &mut feed)?;
    report["source"] = json!(source.describe());
    Ok(report)
}
