//! Harness for the integration tests: a real PostgreSQL server per test binary, a fresh database
//! per test, and connections as real roles.
//!
//! The server runs as the `postgres` OS user when the tests run as root (initdb refuses root).
//! The extension must already be installed into that PostgreSQL; the test command
//! (`scripts/test.sh`) runs `cargo pgrx install` first. Environment:
//! - `MT_PG_CONFIG`: pg_config of the PostgreSQL to test (default: Debian's PostgreSQL 15).
//!
//! Roles (cluster-wide, created once per server):
//! - [`APP`]: LOGIN, NOSUPERUSER, NOBYPASSRLS, owns nothing — what applications connect as;
//! - [`OWNER`]: LOGIN, NOSUPERUSER — owns the application tables and runs migrations;
//! - [`SUPERUSER`]: the bootstrap superuser, for setup and for checking ground truth.
//!
//! The DDL guard is on in every test database. A table "that existed before" (unprotected, in
//! `public`) is made with [`TestDb::legacy`]; damage the guard would refuse is done with
//! [`TestDb::unguarded`]; a database with tables from before `CREATE EXTENSION` comes from
//! [`TestDb::with_setup`]. New tables are created and enabled in one transaction, as migrations do.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub use postgres::error::{DbError, SqlState};
pub use postgres::{Client, NoTls, Row, Transaction};
pub mod pgbouncer;

pub const APP: &str = "mt_app";
pub const OWNER: &str = "mt_owner";
pub const SUPERUSER: &str = "postgres";

/// A PostgreSQL server started for this test binary, stopped and removed when it exits.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    stopped: Mutex<bool>,
}

/// Every server this test binary started, stopped when it exits.
static SERVERS: Mutex<Vec<&'static Server>> = Mutex::new(Vec::new());
static SERVER: OnceLock<&'static Server> = OnceLock::new();

/// The server configuration every test server gets: the library is preloaded, as signed
/// contexts need.
const PRELOAD: &str = "-c shared_preload_libraries=multitenancy";

extern "C" fn stop_servers_at_exit() {
    for server in SERVERS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        server.stop();
    }
}

/// The extension directory (`<sharedir>/extension`) of the PostgreSQL under test.
fn extension_dir() -> PathBuf {
    let sharedir = Command::new(pg_config()).arg("--sharedir").output().expect("run pg_config");
    Path::new(String::from_utf8(sharedir.stdout).expect("pg_config prints UTF-8").trim()).join("extension")
}

/// Copy a released version's install script (`sql/versions/multitenancy--<version>.sql`, kept in
/// the repository) into the extension directory of the PostgreSQL under test, where `cargo pgrx
/// install` put the current version and the upgrade scripts.
pub fn install_released_script(version: &str) {
    let name = format!("multitenancy--{version}.sql");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/versions").join(&name);
    let to = extension_dir().join(&name);
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// Write an upgrade script `multitenancy--<from>--<to>.sql` with `sql` into the extension
/// directory of the PostgreSQL under test (the upgrade test's mutation check).
pub fn install_upgrade_script(from: &str, to: &str, sql: &str) {
    let to = extension_dir().join(format!("multitenancy--{from}--{to}.sql"));
    std::fs::write(&to, sql).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
}

/// Write an extension's control file and its version 1.0 install script into the extension
/// directory of the PostgreSQL under test.
pub fn install_extension_files(name: &str, control: &str, script: &str) {
    let dir = extension_dir();
    std::fs::write(dir.join(format!("{name}.control")), control).unwrap();
    std::fs::write(dir.join(format!("{name}--1.0.sql")), script).unwrap();
}

/// The released versions (`sql/versions/released`).
pub fn released_versions() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/versions/released");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The version of the extension being built (Cargo.toml).
pub fn current_version() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .expect("version in Cargo.toml")
        .to_string()
}

fn pg_config() -> String {
    std::env::var("MT_PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into())
}

/// The `postgres` OS user's uid and gid when running as root (initdb and PgBouncer refuse root).
fn postgres_os_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is read before any other passwd call.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "running as root needs an OS user named postgres to run the server");
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Server {
    /// The server shared by every test of this binary (started on first use).
    pub fn shared() -> &'static Server {
        SERVER.get_or_init(|| Server::start(PRELOAD))
    }

    /// A server of the caller's own with `options` (postgres command-line options) instead of
    /// the shared server's `shared_preload_libraries`, with the same roles; stopped at exit.
    pub fn private(options: &str) -> &'static Server {
        Server::start(options)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // RUST_BACKTRACE would make pgrx append a Rust backtrace to the DETAIL of errors that cross
        // SPI: servers report what a user's server would.
        cmd.env_remove("PGDATA").env_remove("RUST_BACKTRACE").env("LC_ALL", "C");
        cmd
    }

    fn start(extra_options: &str) -> &'static Server {
        let bindir = Command::new(pg_config()).arg("--bindir").output().expect("run pg_config");
        let bindir = PathBuf::from(String::from_utf8(check(bindir, "pg_config --bindir").stdout).unwrap().trim());
        let run_as = postgres_os_user();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("multitenancy-it-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server directory");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the server directory");
        }
        let mut server = Server { port: 0, dir, bindir, run_as, stopped: Mutex::new(false) };
        let data = server.dir.join("data");
        check(
            server
                .command("initdb")
                .args(["-D", data.to_str().unwrap(), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"])
                .output()
                .expect("run initdb"),
            "initdb",
        );
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB {extra_options}",
                server.port,
                server.dir.display()
            );
            let output = server
                .command("pg_ctl")
                .args(["-D", data.to_str().unwrap(), "-l"])
                .arg(server.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .expect("run pg_ctl start");
            if output.status.success() {
                let server: &'static Server = Box::leak(Box::new(server));
                let mut servers = SERVERS.lock().unwrap();
                if servers.is_empty() {
                    // SAFETY: registering a plain extern "C" function.
                    unsafe { libc::atexit(stop_servers_at_exit) };
                }
                servers.push(server);
                drop(servers);
                server.bootstrap();
                return server;
            }
            last_error = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
        }
        panic!("could not start PostgreSQL:\n{last_error}");
    }

    fn bootstrap(&self) {
        let mut client = self.connect("postgres", SUPERUSER);
        let available: i64 = client
            .query_one("SELECT count(*) FROM pg_available_extensions WHERE name = 'multitenancy'", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            available,
            1,
            "the multitenancy extension is not installed into {}; run `cargo pgrx install --pg-config {}` \
             (scripts/test.sh does)",
            self.bindir.display(),
            pg_config()
        );
        client
            .batch_execute(&format!(
                "CREATE ROLE {OWNER} LOGIN NOSUPERUSER NOBYPASSRLS;
                 CREATE ROLE {APP} LOGIN NOSUPERUSER NOBYPASSRLS;"
            ))
            .unwrap();
    }

    fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        *stopped = true;
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.dir.join("data").to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output();
        if std::env::var_os("MT_KEEP_SERVER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, db: &str, user: &str) -> String {
        format!("host=127.0.0.1 port={} dbname={db} user={user} application_name=multitenancy-it", self.port)
    }

    pub fn connect(&self, db: &str, user: &str) -> Client {
        Client::connect(&self.url(db, user), NoTls).unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
    }

    /// Connect and collect the NOTICE/WARNING messages the server sends.
    pub fn connect_with_notices(&self, db: &str, user: &str) -> (Client, Notices) {
        let notices = Notices::default();
        let sink = notices.clone();
        let client = self
            .url(db, user)
            .parse::<postgres::Config>()
            .unwrap()
            .notice_callback(move |notice| sink.0.lock().unwrap().push(notice.message().to_string()))
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"));
        (client, notices)
    }

    /// Path of a program of the server's PostgreSQL (pg_dump, psql, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// NOTICE and WARNING messages received on a connection.
#[derive(Clone, Default)]
pub struct Notices(std::sync::Arc<Mutex<Vec<String>>>);

impl Notices {
    /// The messages received so far, and forget them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A database of its own for one test, with the extension created and the roles set up.
pub struct TestDb {
    pub name: String,
    server: &'static Server,
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub fn new(tag: &str) -> TestDb {
        Self::with_setup(tag, "")
    }

    /// Like [`TestDb::new`], but runs `setup` as the superuser before `CREATE EXTENSION`: a
    /// database that already had tables (and data) when the extension arrived. [`OWNER`] already
    /// has CREATE on `public` when `setup` runs (`SET ROLE mt_owner` to create tables it owns).
    pub fn with_setup(tag: &str, setup: &str) -> TestDb {
        Self::on(Server::shared(), tag, setup)
    }

    /// Like [`TestDb::with_setup`], on `server`.
    pub fn on(server: &'static Server, tag: &str, setup: &str) -> TestDb {
        Self::with_version(server, tag, setup, None)
    }

    /// Like [`TestDb::on`], with `CREATE EXTENSION multitenancy VERSION '<version>'` (a released
    /// version's install script must be in the server's extension directory:
    /// [`install_released_script`]).
    pub fn with_version(server: &'static Server, tag: &str, setup: &str, version: Option<&str>) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let clean: String =
            tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        let name = format!("t{n}_{}", &clean[..clean.len().min(40)]);
        server.connect("postgres", SUPERUSER).batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let db = TestDb { name, server };
        let mut su = db.superuser();
        // PostgreSQL 15's default (and what a DBA does on 14): only the owner creates in public.
        su.batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT CREATE, USAGE ON SCHEMA public TO {OWNER}"
        ))
        .unwrap();
        if !setup.is_empty() {
            su.batch_execute(setup).unwrap_or_else(|e| panic!("setup before CREATE EXTENSION: {e}"));
            su.batch_execute("RESET ROLE").unwrap();
        }
        let version = version.map(|v| format!(" VERSION '{v}'")).unwrap_or_default();
        su.batch_execute(&format!(
            "CREATE EXTENSION multitenancy{version};
                 GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid),
                                           multitenancy.tenant_disable(regclass),
                                           multitenancy.tenant_exempt(regclass, text),
                                           multitenancy.tenant_unexempt(regclass) TO {OWNER};"
        ))
        .unwrap();
        // `cargo pgrx test` installs a build with a `tests` schema of test functions into the same
        // PostgreSQL; these suites must run against the real extension.
        let test_build: bool =
            su.query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tests')", &[]).unwrap().get(0);
        assert!(
            !test_build,
            "a pg_test build of the extension is installed; run `cargo pgrx install --pg-config {}`",
            pg_config()
        );
        db
    }

    pub fn connect(&self, user: &str) -> Client {
        self.server.connect(&self.name, user)
    }

    pub fn connect_with_notices(&self, user: &str) -> (Client, Notices) {
        self.server.connect_with_notices(&self.name, user)
    }

    pub fn superuser(&self) -> Client {
        self.connect(SUPERUSER)
    }

    pub fn app(&self) -> Client {
        self.connect(APP)
    }

    pub fn owner(&self) -> Client {
        self.connect(OWNER)
    }

    pub fn server(&self) -> &'static Server {
        self.server
    }

    /// Run `sql` the way a table that existed before the guard would have been made: as the
    /// superuser, in one transaction, with `multitenancy.ddl_guard` off and the role switched to
    /// [`OWNER`] (so the tables belong to the migration role). Nothing is checked, nothing is
    /// enabled automatically: the result is an unprotected table, as on a database that had
    /// tables before `CREATE EXTENSION`.
    #[track_caller]
    pub fn legacy(&self, sql: &str) {
        self.unguarded(&format!("SET LOCAL ROLE {OWNER};\n{sql}"));
    }

    /// Run `sql` as the superuser in one transaction with `SET LOCAL multitenancy.ddl_guard =
    /// off`: how a DBA (or a test) breaks what the guard would refuse.
    #[track_caller]
    pub fn unguarded(&self, sql: &str) {
        let mut su = self.superuser();
        let mut tx = su.transaction().unwrap();
        tx.batch_execute("SET LOCAL multitenancy.ddl_guard = off").unwrap();
        tx.batch_execute(sql).unwrap_or_else(|e| panic!("with ddl_guard off: {sql}: {e}"));
        tx.commit().unwrap_or_else(|e| panic!("COMMIT with ddl_guard off: {sql}: {e}"));
    }

    /// `multitenancy.verify()` as the superuser, in a stable order.
    pub fn verify(&self) -> Vec<Problem> {
        verify(&mut self.superuser())
    }

    /// Create a tenant (as superuser) and return its id as text.
    pub fn tenant(&self, name: &str, slug: &str) -> String {
        self.superuser().query_one("SELECT multitenancy.tenant_create($1, $2)::text", &[&name, &slug]).unwrap().get(0)
    }
}

/// One row of `multitenancy.verify()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: String,
    pub object: String,
    pub problem: String,
    pub fix: String,
}

/// `multitenancy.verify()`'s problems (severity `error` or `warning`; the `info` rows that list
/// owner code for review are left out) on `client`'s database, ordered, so tests can print and
/// compare them.
pub fn verify(client: &mut impl postgres::GenericClient) -> Vec<Problem> {
    verify_rows(client, "WHERE severity <> 'info'")
}

/// Every row of `multitenancy.verify()`, `info` rows included.
pub fn verify_all(client: &mut impl postgres::GenericClient) -> Vec<Problem> {
    verify_rows(client, "")
}

fn verify_rows(client: &mut impl postgres::GenericClient, filter: &str) -> Vec<Problem> {
    client
        .query(
            &format!("SELECT severity, object, problem, fix FROM multitenancy.verify() {filter} ORDER BY 1, 2, 3"),
            &[],
        )
        .unwrap_or_else(|e| panic!("SELECT * FROM multitenancy.verify(): {e}"))
        .iter()
        .map(|r| Problem {
            severity: r.get::<_, Option<String>>(0).unwrap_or_default(),
            object: r.get::<_, Option<String>>(1).unwrap_or_default(),
            problem: r.get::<_, Option<String>>(2).unwrap_or_default(),
            fix: r.get::<_, Option<String>>(3).unwrap_or_default(),
        })
        .collect()
}

/// Assert that a DDL statement was refused by the guard: SQLSTATE 42501, a message that starts
/// with `refused:` and names `object` (as it appears in the message, e.g. `public.orders`), and
/// a hint saying how to do it right. Returns the error for more checks.
#[track_caller]
pub fn expect_refused<T: std::fmt::Debug>(result: Result<T, postgres::Error>, object: &str) -> DbError {
    let error = expect_sqlstate(result, &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(
        error.message().starts_with("refused:"),
        "expected the guard's refusal (message starting with \"refused:\"), got {:?}",
        error.message()
    );
    assert!(error.message().contains(object), "expected the refusal to name {object}, got {:?}", error.message());
    assert!(
        error.hint().is_some_and(|h| !h.trim().is_empty()),
        "expected a hint with the fix for {:?}",
        error.message()
    );
    error
}

/// Let [`APP`] keep a session-level tenant context across transactions in `db` (the DBA's
/// per-role opt-in, `multitenancy.session_context`); connections opened afterwards have it.
pub fn allow_session_context(db: &TestDb) {
    db.superuser()
        .batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {} SET multitenancy.session_context = on", db.name))
        .unwrap();
}

/// A program the tests ran exited successfully; otherwise panic with its output.
#[track_caller]
pub fn assert_ran(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python of the virtualenv `scripts/setup.sh` makes for the framework and client tests
/// (Django, psycopg 3, psycopg-pool): `MT_PYENV`, default `/opt/multitenancy-pyenv`.
pub fn framework_python() -> PathBuf {
    let venv = std::env::var_os("MT_PYENV").map(PathBuf::from).unwrap_or_else(|| "/opt/multitenancy-pyenv".into());
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no Python virtualenv with Django and psycopg at {}: run scripts/setup.sh (or point MT_PYENV at one)",
        venv.display()
    );
    python
}

/// `(name, definition)` of the constraints of `table` of `contype` ('u', 'p', 'f'), by name.
pub fn constraints(su: &mut Client, table: &str, contype: &str) -> Vec<(String, String)> {
    su.query(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = $1::text::regclass AND contype = $2::text::\"char\" ORDER BY conname",
        &[&table, &contype],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Whether a relation exists (ground truth, as superuser); `name` as `to_regclass` takes it.
/// Ground truth: where the usage counters disagree with the tenant-enabled tables
/// (`multitenancy.usage_drift()`, one line per row, as `client` — the superuser). Empty when
/// every counter is exact.
pub fn usage_drift(client: &mut impl postgres::GenericClient) -> Vec<String> {
    client
        .query(
            "SELECT format('tenant %s table %s: rows %s counted / %s actual, bytes %s counted / %s actual', tenant_id,
                           coalesce(table_name::text, '(totals)'), rows_counted, rows_actual, bytes_counted, bytes_actual)
               FROM multitenancy.usage_drift()",
            &[],
        )
        .unwrap_or_else(|e| panic!("SELECT * FROM multitenancy.usage_drift(): {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `server_version_num` of the server `client` is connected to (140000 and up).
pub fn server_version(client: &mut impl postgres::GenericClient) -> i32 {
    client.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0)
}

/// `WITH (security_invoker = true)` for a `CREATE VIEW`, or nothing on PostgreSQL 14, which has
/// no security_invoker views (there a view over an enabled table is safe when its owner is
/// filtered by row level security: the table owner, say).
pub fn invoker(client: &mut impl postgres::GenericClient) -> &'static str {
    if server_version(client) < 150000 {
        ""
    } else {
        " WITH (security_invoker = true)"
    }
}

pub fn relation_exists(superuser: &mut Client, name: &str) -> bool {
    superuser.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).unwrap().get(0)
}

/// Whether `multitenancy.enabled_tables` lists the table (ground truth, as superuser).
pub fn is_enabled(superuser: &mut Client, table: &str) -> bool {
    superuser
        .query_one("SELECT EXISTS (SELECT 1 FROM multitenancy.enabled_tables WHERE relid = to_regclass($1))", &[&table])
        .unwrap()
        .get(0)
}

/// Whether `multitenancy.exempt_tables` lists the table (ground truth, as superuser).
pub fn is_exempt(superuser: &mut Client, table: &str) -> bool {
    superuser
        .query_one("SELECT EXISTS (SELECT 1 FROM multitenancy.exempt_tables WHERE relid = to_regclass($1))", &[&table])
        .unwrap()
        .get(0)
}

/// Tenant isolation on one table of database `db`, as [`APP`] (which must have SELECT on it):
/// for every `(slug, id)` in `tenants`, the ground truth (superuser) has rows of that tenant and
/// of every other listed tenant, and with `slug`'s context APP sees exactly that tenant's rows
/// and none of any other's. Fails if the table is not filtered, or if the fixture has no rows.
#[track_caller]
pub fn assert_isolated(server: &Server, db: &str, table: &str, tenants: &[(&str, &str)]) {
    assert!(tenants.len() >= 2, "isolation needs at least two tenants");
    let mut su = server.connect(db, SUPERUSER);
    let truth = |su: &mut Client, id: &str| -> i64 {
        su.query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&id])
            .unwrap_or_else(|e| panic!("ground truth on {table}: {e}"))
            .get(0)
    };
    let mut app = server.connect(db, APP);
    for (slug, id) in tenants {
        let own = truth(&mut su, id);
        assert!(own > 0, "ground truth: tenant {slug} must have rows in {table} for the check to mean anything");
        let mut tx = begin_as(&mut app, slug);
        let seen: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap_or_else(|e| panic!("as {APP} with {slug}'s context, SELECT from {table}: {e}"))
            .get(0);
        assert_eq!(seen, own, "as {APP} with {slug}'s context, {table} must show exactly {slug}'s {own} row(s)");
        for (other_slug, other_id) in tenants.iter().filter(|(s, _)| s != slug) {
            let exists = truth(&mut su, other_id);
            assert!(exists > 0, "ground truth: tenant {other_slug} must have rows in {table}");
            let leaked: i64 = tx
                .query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[other_id])
                .unwrap()
                .get(0);
            assert_eq!(
                leaked, 0,
                "as {APP} with {slug}'s context, {table} must show none of {other_slug}'s {exists} row(s)"
            );
        }
        tx.commit().unwrap();
    }
}

/// The `DbError` inside a client error, with a readable panic when there is none.
pub fn db_error(error: &postgres::Error) -> &DbError {
    error.as_db_error().unwrap_or_else(|| panic!("expected a database error, got: {error}"))
}

/// Assert that a statement failed with `code`, and return the server's error for more checks.
#[track_caller]
pub fn expect_sqlstate<T: std::fmt::Debug>(result: Result<T, postgres::Error>, code: &SqlState) -> DbError {
    match result {
        Ok(value) => panic!("expected SQLSTATE {}, but the statement succeeded: {value:?}", code.code()),
        Err(error) => {
            let db = db_error(&error).clone();
            assert_eq!(
                db.code(),
                code,
                "expected SQLSTATE {}, got {}: {} (hint: {:?})",
                code.code(),
                db.code().code(),
                db.message(),
                db.hint()
            );
            db
        }
    }
}

/// Begin a transaction and make `tenant` (slug or id) its context with `tenant_set`.
pub fn begin_as<'a>(client: &'a mut Client, tenant: &str) -> Transaction<'a> {
    let mut tx = client.transaction().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set($1)", &[&tenant]).unwrap();
    tx
}

/// Begin a transaction as end user `user` (`multitenancy.user_id`) with `tenant` (slug or id) as
/// its context, set with `tenant_set` — which checks that the user is a member.
pub fn begin_as_user<'a>(client: &'a mut Client, tenant: &str, user: &str) -> Transaction<'a> {
    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&user]).unwrap();
    tx.query_one("SELECT multitenancy.tenant_set($1)", &[&tenant])
        .unwrap_or_else(|e| panic!("tenant_set({tenant:?}) as user {user}: {e}"));
    tx
}

/// One statement as end user `user` with `tenant`'s context, in its own transaction, committed
/// when it succeeds (rolled back otherwise).
pub fn as_user(app: &mut Client, tenant: &str, user: &str, sql: &str) -> Result<u64, postgres::Error> {
    let mut tx = begin_as_user(app, tenant, user);
    let n = tx.execute(sql, &[])?;
    tx.commit()?;
    Ok(n)
}

/// Message fragments (any of them, case-insensitive) accepted for a 42501 refusal of a
/// management call.
pub const DENIED: &[&str] =
    &["permission denied", "not allowed", "not permitted", "requires", "must be", "only", "cannot"];

/// Assert a refusal: SQLSTATE `code` and a message containing one of `fragments`
/// (case-insensitive).
#[track_caller]
pub fn expect_sqlstate_mentioning<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    code: &SqlState,
    fragments: &[&str],
) -> DbError {
    let error = expect_sqlstate(result, code);
    let message = error.message().to_lowercase();
    assert!(
        fragments.iter().any(|f| message.contains(&f.to_lowercase())),
        "expected the message of {} to mention one of {fragments:?}, got {:?}",
        code.code(),
        error.message()
    );
    error
}

/// Reading the `orders` table must fail closed with 28000 "no tenant context", not return rows.
#[track_caller]
pub fn assert_no_context(client: &mut impl postgres::GenericClient, situation: &str) {
    let error = expect_sqlstate(
        client.query("SELECT count(*) FROM orders", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("no tenant context"), "{situation}: unexpected message {:?}", error.message());
}

/// A reference table every tenant shares: `countries`, exempt, owned by whoever runs this
/// ([`OWNER`] in the suites), with one row ('de', 'Germany').
pub fn create_exempt_countries(owner: &mut impl postgres::GenericClient) {
    owner
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_exempt('countries', 'reference data');
             INSERT INTO countries VALUES ('de', 'Germany');",
        )
        .unwrap();
}

/// Count rows with a query that returns one bigint.
pub fn count(client: &mut impl postgres::GenericClient, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Create the canonical `orders` table as [`OWNER`], tenant-enabled, readable and writable by
/// [`APP`] (no rows).
pub fn create_orders(db: &TestDb) {
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                  item text NOT NULL, amount int NOT NULL DEFAULT 1);
             SELECT multitenancy.tenant_enable('orders');
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {APP};"
        ))
        .unwrap();
}

/// Assert a quota refusal: SQLSTATE 53400, exactly the extension's message, and a hint.
#[track_caller]
pub fn expect_quota_exceeded<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    key: &str,
    slug: &str,
    used: i64,
    adding: i64,
    quota: i64,
) -> DbError {
    let error = expect_sqlstate(result, &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    let expected =
        format!("quota \"{key}\" of tenant \"{slug}\" exceeded: {used} used, {adding} more requested, limit {quota}");
    assert_eq!(error.message(), expected, "the 53400 message");
    assert!(
        error.hint().is_some_and(|h| !h.trim().is_empty()),
        "a quota refusal comes with a hint: {:?}",
        error.message()
    );
    error
}

/// The canonical test table: `orders` owned by [`OWNER`], tenant-enabled, readable and writable
/// by [`APP`], with rows of two tenants written through the tenant context as [`APP`].
pub struct Orders {
    pub db: TestDb,
    /// Tenant A ("acme") and B ("globex") ids.
    pub a: String,
    pub b: String,
    pub rows_a: i64,
    pub rows_b: i64,
}

impl Orders {
    pub fn new(tag: &str) -> Orders {
        Self::with_rows(tag, 3, 2)
    }

    pub fn with_rows(tag: &str, rows_a: i64, rows_b: i64) -> Orders {
        Self::on(Server::shared(), tag, rows_a, rows_b)
    }

    /// The fixture on `server` (see [`Server::private`]).
    pub fn on(server: &'static Server, tag: &str, rows_a: i64, rows_b: i64) -> Orders {
        let db = TestDb::on(server, tag, "");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        create_orders(&db);
        let mut app = db.app();
        for (tenant, rows) in [("acme", rows_a), ("globex", rows_b)] {
            let mut tx = begin_as(&mut app, tenant);
            for i in 0..rows {
                tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&format!("{tenant}-item-{i}")]).unwrap();
            }
            tx.commit().unwrap();
        }
        Orders { db, a, b, rows_a, rows_b }
    }

    /// Ground truth, read by the superuser (who bypasses RLS): rows of a tenant.
    pub fn true_count(&self, tenant_id: &str) -> i64 {
        self.db
            .superuser()
            .query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&tenant_id])
            .unwrap()
            .get(0)
    }
}

/// Everything a DBA could see of a table — columns, defaults, RLS flags, indexes, policies,
/// constraints, registry entry, and a digest of its rows — as one string, so a test can assert
/// that a refused statement changed nothing. Read as the superuser (ground truth).
pub fn table_snapshot(superuser: &mut Client, table: &str) -> String {
    const SQL: &str = "
        SELECT concat_ws(E'\\n',
          (SELECT string_agg(format('%s %s notnull=%s default=%s', a.attname,
                                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                    pg_get_expr(d.adbin, d.adrelid)), ', ' ORDER BY a.attnum)
             FROM pg_attribute a
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped),
          (SELECT format('rls=%s force=%s', relrowsecurity, relforcerowsecurity)
             FROM pg_class WHERE oid = $1::text::regclass),
          (SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY pg_get_indexdef(indexrelid))
             FROM pg_index WHERE indrelid = $1::text::regclass),
          (SELECT string_agg(format('%s permissive=%s cmd=%s roles=%s using=%s check=%s', polname,
                                    polpermissive, polcmd, polroles, pg_get_expr(polqual, polrelid),
                                    pg_get_expr(polwithcheck, polrelid)), '; ' ORDER BY polname)
             FROM pg_policy WHERE polrelid = $1::text::regclass),
          (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname)
             FROM pg_constraint WHERE conrelid = $1::text::regclass),
          (SELECT 'registered=' || count(*) FROM multitenancy.enabled_tables WHERE relid = $1::text::regclass))";
    let catalog: String = superuser.query_one(SQL, &[&table]).unwrap().get(0);
    let rows: Option<String> = superuser
        .query_one(&format!("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"), &[])
        .unwrap()
        .get(0);
    format!("{catalog}\nrows={}", rows.unwrap_or_default())
}
