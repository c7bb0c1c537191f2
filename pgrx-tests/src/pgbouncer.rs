//! A real PgBouncer in **transaction pooling mode** in front of the shared test server, and
//! simple-protocol helpers to talk through it.
//!
//! In transaction mode PgBouncer hands one server connection to whichever client starts a
//! transaction next, and gives it back when the transaction ends; nothing runs on the server
//! connection in between (this harness also empties `server_reset_query`, which transaction
//! mode does not run anyway). So with `default_pool_size = 1` every client of one
//! database/user pair shares ONE PostgreSQL backend: whatever a transaction leaves behind in
//! that backend, the next client's transaction finds. Tests prove the sharing by comparing
//! `pg_backend_pid()` as the clients see it ([`backend_pid`]).
//!
//! PgBouncer 1.18 does not support named prepared statements in transaction mode, and the
//! `query` / `execute` family of rust-postgres uses them: through PgBouncer use only the simple
//! query protocol, `batch_execute` and the helpers below ([`simple_column`], [`simple_value`],
//! [`simple_one`], [`simple_count`]), with values formatted into the SQL text.
//!
//! The binary is `pgbouncer` on `PATH`, `/usr/sbin/pgbouncer` (Debian's package), or
//! `MT_PGBOUNCER`. PgBouncer refuses to run as root: when the tests run as root it runs as the
//! `postgres` OS user, like the server. `MT_KEEP_SERVER` keeps its directory (config and log).
use crate::{free_port, postgres_os_user, Client, NoTls, Server};
use postgres::SimpleQueryMessage;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A PgBouncer process (transaction pooling, trust auth) in front of [`Server::shared`],
/// listening on 127.0.0.1; killed and its directory removed when dropped.
pub struct PgBouncer {
    pub port: u16,
    pub dir: PathBuf,
    pub pool_size: u32,
    child: Child,
}

static BOUNCER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The pgbouncer binary: `MT_PGBOUNCER`, else `pgbouncer` on PATH, else Debian's /usr/sbin.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MT_PGBOUNCER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("pgbouncer")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from("/usr/local/sbin/pgbouncer")])
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("pgbouncer is not installed: apt-get install pgbouncer (scripts/setup.sh does)"))
}

impl PgBouncer {
    /// Start PgBouncer in transaction pooling mode in front of the shared server, with
    /// `pool_size` server connections per database/user pair (1: all clients of a pair share
    /// one backend). Waits until it accepts connections.
    pub fn transaction_mode(pool_size: u32) -> PgBouncer {
        assert!(pool_size >= 1, "a pool needs at least one server connection");
        let server = Server::shared();
        let binary = binary();
        let run_as = postgres_os_user();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let n = BOUNCER_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("multitenancy-pgbouncer-{}-{n}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the pgbouncer directory");
        // Trust auth still needs every user listed in the auth file.
        std::fs::write(dir.join("userlist.txt"), format!("\"{}\" \"\"\n\"{}\" \"\"\n", crate::APP, crate::SUPERUSER))
            .expect("write the pgbouncer auth file");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the pgbouncer directory");
        }

        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("pgbouncer.ini");
            std::fs::write(&config, Self::config(server.port, port, pool_size, &dir)).expect("write pgbouncer.ini");
            let stderr = std::fs::File::create(dir.join("stderr.log")).expect("create pgbouncer's stderr file");
            let mut command = Command::new(&binary);
            command.arg(&config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
            if let Some((uid, gid)) = run_as {
                command.uid(uid).gid(gid);
            }
            let mut child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            if wait_until_listening(&mut child, port, &dir) {
                return PgBouncer { port, dir, pool_size, child };
            }
            // Most likely the port was taken in the meantime: try another one.
            let _ = child.kill();
            let _ = child.wait();
            last_log = read_log(&dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start pgbouncer ({}):\n{last_log}", binary.display());
    }

    fn config(server_port: u16, port: u16, pool_size: u32, dir: &Path) -> String {
        format!(
            "[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 100
server_reset_query =
server_reset_query_always = 0
ignore_startup_parameters = extra_float_digits,options
query_wait_timeout = 30
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
",
            dir = dir.display()
        )
    }

    /// PgBouncer's log and stderr, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// Connection string for database `db` as `user`, through PgBouncer.
    pub fn url(&self, db: &str, user: &str) -> String {
        format!("host=127.0.0.1 port={} dbname={db} user={user} application_name=multitenancy-it", self.port)
    }

    /// A client connected through PgBouncer. Use only the simple query protocol on it.
    pub fn connect(&self, db: &str, user: &str) -> Client {
        Client::connect(&self.url(db, user), NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {user} through pgbouncer: {e}\n{}", self.log()))
    }
}

/// Wait up to 20 s for `port` to accept connections; false when the process exited first.
fn wait_until_listening(child: &mut Child, port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pgbouncer did not accept connections on port {port} within 20 s:\n{}", read_log(dir));
}

fn read_log(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("pgbouncer.log"), read("stderr.log"))
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("MT_KEEP_SERVER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The first column of every row `sql` returns (all statements of it), over the simple query
/// protocol. NULL is `None`.
pub fn simple_column(client: &mut Client, sql: &str) -> Result<Vec<Option<String>>, postgres::Error> {
    Ok(client
        .simple_query(sql)?
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect())
}

/// The first column of the first row `sql` returns, over the simple query protocol (panics if
/// it returns no row). NULL is `None`.
pub fn simple_value(client: &mut Client, sql: &str) -> Result<Option<String>, postgres::Error> {
    let mut values = simple_column(client, sql)?;
    assert!(!values.is_empty(), "{sql}: expected a row, got none");
    Ok(values.swap_remove(0))
}

/// The first column of the first row, which must succeed and not be NULL.
#[track_caller]
pub fn simple_one(client: &mut Client, sql: &str) -> String {
    simple_value(client, sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// A count (one bigint) over the simple query protocol.
#[track_caller]
pub fn simple_count(client: &mut Client, sql: &str) -> i64 {
    let value = simple_one(client, sql);
    value.parse().unwrap_or_else(|e| panic!("{sql}: {value:?} is not a count: {e}"))
}

/// The pid of the PostgreSQL backend serving this statement (through PgBouncer: the server
/// connection the client has been given for it).
#[track_caller]
pub fn backend_pid(client: &mut Client) -> i32 {
    let pid = simple_one(client, "SELECT pg_backend_pid()");
    pid.parse().unwrap_or_else(|e| panic!("pg_backend_pid() = {pid:?}: {e}"))
}

/// `text` as an SQL string literal (for values formatted into simple-protocol SQL).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
