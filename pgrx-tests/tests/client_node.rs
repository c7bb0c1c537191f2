//! The Node helper (`clients/node`, `withTenant` for node-postgres) against the extension: its
//! tests (`clients/node/test/`, `node --test`) run as [`APP`] on the `orders` fixture with rows
//! of two tenants, with a superuser connection for ground truth and `pg_terminate_backend`.
//!
//! Node and npm come from Debian (`scripts/setup.sh` installs `nodejs npm` when `node` is
//! missing); Node 18 or newer. The real `pg` package is installed from the npm registry with
//! `npm ci` (exact versions from `clients/node/package-lock.json`) into `clients/node/node_modules`,
//! only when that is missing or older than the lockfile. A missing node or npm fails the test.
use multitenancy_integration::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest the node tests may take before they are killed (they take a few seconds).
const NODE_TIMEOUT: Duration = Duration::from_secs(90);

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node")
}

/// `program --version`, or a failure saying how to get it.
fn version_of(program: &str) -> String {
    let output = Command::new(program).arg("--version").output().unwrap_or_else(|e| {
        panic!("`{program}` is not available ({e}): the Node client tests need Node.js 18+ and npm; run scripts/setup.sh (apt-get install nodejs npm)")
    });
    assert!(output.status.success(), "`{program} --version` failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Without libpq's PG* variables of the caller (pg reads them) and with npm quiet.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("PG") || name.starts_with("NODE_") {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(package_dir())
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false");
    cmd
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `npm ci` unless `node_modules` was installed after the last change of package.json and
/// package-lock.json (npm records an install in `node_modules/.package-lock.json`).
fn npm_install() {
    let dir = package_dir();
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let wanted = [modified(&dir.join("package.json")), modified(&dir.join("package-lock.json"))];
    let up_to_date = dir.join("node_modules/pg/package.json").is_file()
        && wanted.iter().all(|w| matches!((installed, w), (Some(i), Some(w)) if i >= *w));
    if up_to_date {
        return;
    }
    let output = command("npm").args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]).output().unwrap();
    assert_ran(&output, "npm ci in clients/node");
}

/// Run `cmd` to completion, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (Output, bool) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start node");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).ok();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).ok();
        buf
    });
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }, timed_out)
}

/// The totals node's test runner prints at the end (TAP `# pass 11` or spec `ℹ pass 11`).
fn total(report: &str, key: &str) -> Option<u64> {
    report.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("# ").or_else(|| line.trim().strip_prefix("ℹ "))?;
        rest.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[test]
fn node_with_tenant_helper_against_a_real_server() {
    let started = Instant::now();
    let node = version_of("node");
    let major: u32 = node.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 18, "the Node client needs Node.js 18 or newer, found {node}");
    let npm = version_of("npm");

    let fixture = Orders::new("client_node");
    let db = &fixture.db;
    let mut su = db.superuser();
    let before = count(&mut su, "SELECT count(*) FROM orders");

    let install_started = Instant::now();
    npm_install();
    let install_seconds = install_started.elapsed().as_secs_f64();

    let url = |user: &str| format!("postgresql://{user}@127.0.0.1:{}/{}", db.server().port, db.name);
    let mut cmd = command("node");
    cmd.args(["--test", "test/with-tenant.test.js"])
        .env("MT_TEST_APP_URL", url(APP))
        .env("MT_TEST_SUPERUSER_URL", url(SUPERUSER))
        .env("MT_TEST_TENANT_A_ID", &fixture.a)
        .env("MT_TEST_TENANT_B_ID", &fixture.b);
    let node_started = Instant::now();
    let (output, timed_out) = run_with_timeout(cmd, NODE_TIMEOUT);
    let node_seconds = node_started.elapsed().as_secs_f64();
    let report = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!timed_out, "node --test did not finish within {NODE_TIMEOUT:?} and was killed:\n{report}");
    assert!(output.status.success(), "node --test failed ({}) with node {node}, npm {npm}:\n{report}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let passed = total(&stdout, "pass").unwrap_or_else(|| panic!("no totals in node's output:\n{report}"));
    assert!(passed >= 14, "expected the 14 node tests to pass, {passed} did:\n{report}");
    for key in ["fail", "cancelled", "skipped", "todo"] {
        assert_eq!(total(&stdout, key), Some(0), "node tests {key}:\n{report}");
    }

    // Ground truth: the node tests left the fixture as they found it (what they rolled back is
    // not there, what they committed they deleted).
    assert_eq!(count(&mut su, "SELECT count(*) FROM orders"), before, "rows of orders after the node tests");
    for (tenant, rows) in [(&fixture.a, fixture.rows_a), (&fixture.b, fixture.rows_b)] {
        assert_eq!(fixture.true_count(tenant), rows);
    }
    assert_isolated(db.server(), &db.name, "orders", &[("acme", &fixture.a), ("globex", &fixture.b)]);
    eprintln!(
        "client_node: node {node}, npm {npm}; install {install_seconds:.1} s, node --test {node_seconds:.1} s, \
         whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
