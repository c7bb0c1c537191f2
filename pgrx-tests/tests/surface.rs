//! The extension's SQL surface as a whole.
//!
//! - Which functions PUBLIC may execute, and which functions are trigger functions, is held to an
//!   allowlist kept in the repository (`pgrx-tests/public_functions.txt`): a function that
//!   becomes callable by every role, or a trigger function that appears, is a decision someone
//!   has to write down.
//! - Every function of the schema answers hostile arguments (NULL, empty and 1 MB strings,
//!   extreme numbers and intervals, the nil uuid, dangling oids, wrongly shaped records) with a
//!   clean error: no crash, no internal error (SQLSTATE class XX), a NULL argument named by its
//!   parameter name, and no message that echoes a 1 MB input back.
use multitenancy_integration::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The allowlist
// ---------------------------------------------------------------------------------------------

/// The allowlist, relative to the workspace root (for messages) and as a path on this machine.
const ALLOWLIST_NAME: &str = "pgrx-tests/public_functions.txt";
const ALLOWLIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/public_functions.txt");

/// The surface the allowlist describes: `regprocedure` signatures, as PostgreSQL prints them
/// with `search_path = pg_catalog`.
#[derive(Debug, Default)]
struct Surface {
    /// Functions PUBLIC may EXECUTE (trigger functions included).
    public: BTreeSet<String>,
    /// Functions returning `trigger` or `event_trigger`, whoever may execute them.
    triggers: BTreeSet<String>,
}

/// The allowlist file: plain lines are functions PUBLIC may execute, `trigger <signature>` lines
/// are trigger and event-trigger functions; `#` starts a comment. Malformed and repeated lines
/// are returned as problems.
fn read_allowlist() -> (Surface, Vec<String>) {
    let text = std::fs::read_to_string(ALLOWLIST).unwrap_or_else(|e| panic!("read {ALLOWLIST_NAME}: {e}"));
    let mut surface = Surface::default();
    let mut problems = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let (set, signature) = match line.strip_prefix("trigger ") {
            Some(rest) => (&mut surface.triggers, rest.trim()),
            None => (&mut surface.public, line),
        };
        if !(signature.starts_with("multitenancy.") && signature.ends_with(')') && signature.contains('(')) {
            problems.push(format!("line {}: {raw:?} is not `[trigger ]multitenancy.<name>(<argument types>)`", n + 1));
        } else if !set.insert(signature.to_string()) {
            problems.push(format!("line {}: {raw:?} is listed twice", n + 1));
        }
    }
    (surface, problems)
}

/// The surface of the installed extension, read from the catalog.
fn installed_surface(su: &mut Client) -> Surface {
    let mut surface = Surface::default();
    for f in functions(su) {
        if f.public {
            surface.public.insert(f.signature.clone());
        }
        if f.trigger {
            surface.triggers.insert(f.signature);
        }
    }
    surface
}

#[test]
fn public_surface_matches_the_allowlist() {
    let db = TestDb::new("surface_allowlist");
    let installed = installed_surface(&mut db.superuser());
    assert!(
        !installed.public.is_empty(),
        "ground truth: PUBLIC may execute some functions (current_tenant_id at least)"
    );
    assert!(
        installed.public.contains("multitenancy.current_tenant_id()"),
        "ground truth: the row level security policies call current_tenant_id() as every role"
    );
    let (listed, problems) = read_allowlist();

    let mut report = String::new();
    for problem in &problems {
        writeln!(report, "  {ALLOWLIST_NAME} {problem}").unwrap();
    }
    let sections = [
        ("functions PUBLIC may execute", "", &installed.public, &listed.public),
        ("trigger and event-trigger functions", "trigger ", &installed.triggers, &listed.triggers),
    ];
    for (what, prefix, installed, listed) in sections {
        let added: Vec<_> = installed.difference(listed).collect();
        let missing: Vec<_> = listed.difference(installed).collect();
        if !added.is_empty() {
            writeln!(report, "\n{what}, in the extension but not in {ALLOWLIST_NAME} (added):").unwrap();
            for signature in added {
                writeln!(report, "  {prefix}{signature}").unwrap();
            }
        }
        if !missing.is_empty() {
            writeln!(report, "\n{what}, in {ALLOWLIST_NAME} but not in the extension (missing):").unwrap();
            for signature in missing {
                writeln!(report, "  {prefix}{signature}").unwrap();
            }
        }
    }
    assert!(
        report.is_empty(),
        "the extension's public surface differs from the allowlist {ALLOWLIST_NAME}:\n{report}\n\
         For each ADDED function, decide: if applications have no business calling it, revoke it in \
         sql/finalize.sql (REVOKE EXECUTE ON FUNCTION <signature> FROM PUBLIC); if every role must be \
         able to call it, add its line to {ALLOWLIST_NAME} with a `#` comment saying why it is public \
         (a new trigger function gets a `trigger <signature>` line, and a plain line too if PUBLIC may \
         execute it). For each MISSING line: delete it if the function was removed or revoked on \
         purpose, otherwise restore the function or its grant."
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile arguments
// ---------------------------------------------------------------------------------------------

/// End users in the fuzz fixture: acme's owner (the user of the calls with a context), a
/// member of acme, and a user who is a member of nothing.
const OWNER_USER: &str = "11111111-2222-4333-8444-555555555555";
const MEMBER_USER: &str = "22222222-3333-4444-8555-666666666666";
const NEW_USER: &str = "33333333-4444-4555-8666-777777777777";
/// 32 bytes, for bytea arguments (a signing key's size).
const BYTES: &str = "\\x8f3a1c5e9b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3a5c7e9b0d2f4a6c8e1b";
/// Statement settings of every fuzz call: a hang is reported, not waited for.
const CALL_LIMITS: &str = "SET LOCAL statement_timeout = '20s'; SET LOCAL lock_timeout = '5s'";
/// The longest message + detail + hint an error may have.
const MAX_ERROR_TEXT: usize = 2000;

/// One function of the schema, from the catalog.
#[derive(Debug)]
struct Function {
    signature: String,
    name: String,
    /// `f` function, `p` procedure, `a` aggregate, `w` window.
    kind: String,
    public: bool,
    trigger: bool,
    args: Vec<Param>,
}

/// An input parameter: its name (empty when it has none) and its type as `format_type` prints it.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    ty: String,
}

/// Every function of the schema. Signatures are printed with `search_path = pg_catalog`, so
/// they do not depend on the session's search_path. PUBLIC's privilege is read from the ACL
/// (`has_function_privilege` does not take PUBLIC): grantee 0 is PUBLIC, and a NULL ACL means
/// the default, which grants EXECUTE to PUBLIC.
fn functions(su: &mut Client) -> Vec<Function> {
    su.batch_execute("SET search_path = pg_catalog, pg_temp").unwrap();
    let rows = su
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text, p.prokind::text,
                    EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                             WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
                    p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype),
                    ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, n)
                           ORDER BY n),
                    p.proargnames::text[], p.proargmodes::text[]
               FROM pg_proc p
              WHERE p.pronamespace = 'multitenancy'::regnamespace
              ORDER BY 1",
            &[],
        )
        .unwrap();
    su.batch_execute("RESET search_path").unwrap();
    rows.iter()
        .map(|row| {
            let types: Vec<String> = row.get(5);
            let names: Option<Vec<String>> = row.get(6);
            let modes: Option<Vec<String>> = row.get(7);
            // proargnames covers every argument (OUT ones too) when proargmodes is set; only
            // IN, INOUT and VARIADIC arguments are passed.
            let input_names: Vec<String> = match (names, modes) {
                (Some(names), Some(modes)) => names
                    .into_iter()
                    .zip(modes)
                    .filter(|(_, mode)| matches!(mode.as_str(), "i" | "b" | "v"))
                    .map(|(name, _)| name)
                    .collect(),
                (Some(names), None) => names,
                (None, _) => Vec::new(),
            };
            let args = types
                .into_iter()
                .enumerate()
                .map(|(i, ty)| Param { name: input_names.get(i).cloned().unwrap_or_default(), ty })
                .collect();
            Function {
                signature: row.get(0),
                name: row.get(1),
                kind: row.get(2),
                public: row.get(3),
                trigger: row.get(4),
                args,
            }
        })
        .collect()
}

/// An argument value: what the report calls it and the SQL expression (typed).
#[derive(Debug, Clone)]
struct Value {
    kind: String,
    sql: String,
    null: bool,
}

fn literal(text: &str, ty: &str) -> String {
    format!("'{}'::{ty}", text.replace('\'', "''"))
}

fn value(kind: &str, sql: String) -> Value {
    Value { kind: kind.into(), sql, null: false }
}

fn is_text(ty: &str) -> bool {
    matches!(ty, "text" | "name" | "character varying" | "character" | "citext")
}

/// What the fuzz fixture made, for valid arguments.
struct Fixture {
    /// Tenant "acme" (active, owner [`OWNER_USER`], member [`MEMBER_USER`], domains).
    acme: String,
    /// Tenant "umbrella", deleted (what tenant_purge takes).
    umbrella: String,
    /// A tenant token for acme and [`OWNER_USER`], signed with key "k1".
    signed_token: String,
    /// The verification token of the unverified domain `shop.acme.example`.
    domain_token: String,
}

/// A valid value for parameter `param` of function `function`: where the function needs a
/// particular one (a tenant in the right state, an unused slug, a key that is metered), that;
/// else by the parameter's name; else by its type. `None` for a type this test does not know.
fn plausible(function: &str, param: &Param, fx: &Fixture) -> Option<String> {
    let name = param.name.strip_prefix("p_").unwrap_or(&param.name);
    let ty = param.ty.as_str();
    // The internal owner-management functions get acme's (only) owner: with
    // p_may_manage_owners false they must refuse, and NULL must not get further than false.
    if matches!(function, "_member_remove" | "_member_set_role") && name == "user" {
        return Some(literal(OWNER_USER, "uuid"));
    }
    let function = function.strip_prefix('_').unwrap_or(function);
    if is_text(ty) {
        let text = match (function, name) {
            ("tenant_create", "name") => "Initech",
            ("tenant_create", "slug") => "initech",
            ("tenant_rename", "name") => "Acme Inc",
            ("tenant_rename", "slug") => "acme-inc",
            ("plan_set", "name") => "pro",
            ("signing_key_add", "name") => "k2",
            ("signing_key_retire", "name") => "k1",
            ("tenant_activate", "tenant") => "hooli",
            ("tenant_purge", "tenant" | "confirm_slug") => "umbrella",
            ("tenant_status", "status") => "suspended",
            ("domain_add", "domain") => "new.acme.example",
            ("domain_verify", "domain") => "shop.acme.example",
            ("domain_verify", "token") => &fx.domain_token,
            ("tenant_set_signed", "token") => &fx.signed_token,
            ("usage_record", "key") => "api_calls",
            ("member_set_role", "role") => "admin",
            (_, "domain" | "host") => "acme.example.com",
            (_, "key" | "flag") => "rows",
            (_, "role" | "min_role") => "member",
            (_, "reason") => "surface fuzz test",
            (_, "plan") => "pro",
            (_, "name") => "Acme",
            (_, "status") => "active",
            (_, "token") => "not-a-token",
            (_, "verb") => "remove",
            _ => "acme",
        };
        return Some(literal(text, ty));
    }
    Some(match ty {
        "uuid" => match (function, name) {
            ("member_add" | "tenant_create", "user" | "user_id" | "owner") => literal(NEW_USER, "uuid"),
            ("member_remove" | "member_set_role" | "lock_member", "user" | "user_id") => literal(MEMBER_USER, "uuid"),
            (_, "user" | "user_id" | "owner" | "by") => literal(OWNER_USER, "uuid"),
            ("tenant_purge", "tenant") => literal(&fx.umbrella, "uuid"),
            _ => literal(&fx.acme, "uuid"),
        },
        "regclass" => match function {
            "tenant_enable" | "tenant_exempt" => literal("notes", "regclass"),
            "tenant_unexempt" => literal("countries", "regclass"),
            _ => literal("orders", "regclass"),
        },
        "oid" => "'orders'::regclass::oid".into(),
        "jsonb" => literal("{}", "jsonb"),
        "json" => literal("{}", "json"),
        "bytea" => literal(BYTES, "bytea"),
        "boolean" => "false".into(),
        "interval" => literal("5 minutes", "interval"),
        "bigint" => "1::bigint".into(),
        "integer" => "1::integer".into(),
        "smallint" => "1::smallint".into(),
        "numeric" => "1::numeric".into(),
        "timestamp with time zone" => literal("2026-01-15 12:00:00+00", "timestamptz"),
        "date" => literal("2026-01-15", "date"),
        "record" => "ROW(1, 'x'::text, true)".into(),
        "text[]" => "ARRAY['acme']::text[]".into(),
        "uuid[]" => format!("ARRAY[{}]::uuid[]", literal(&fx.acme, "uuid")),
        _ => return None,
    })
}

/// The hostile values for a parameter of type `ty`: NULL always, then what the type allows.
fn hostile(ty: &str) -> Vec<Value> {
    let mut values = vec![Value { kind: "NULL".into(), sql: format!("NULL::{ty}"), null: true }];
    let big = "repeat('x', 1048576)";
    if is_text(ty) {
        values.push(value("empty string", literal("", ty)));
        values.push(value("1 MB string", format!("{big}::{ty}")));
        return values;
    }
    match ty {
        "text[]" => {
            values.push(value("empty array", "'{}'::text[]".into()));
            values.push(value("1 MB element", format!("ARRAY[{big}]")));
            values.push(value("a NULL element", "ARRAY[NULL]::text[]".into()));
        }
        "bigint" => {
            values.push(value("bigint min", "(-9223372036854775808)::bigint".into()));
            values.push(value("bigint max", "9223372036854775807::bigint".into()));
            values.push(value("-1", "(-1)::bigint".into()));
            values.push(value("0", "0::bigint".into()));
        }
        "integer" => {
            values.push(value("integer min", "(-2147483648)::integer".into()));
            values.push(value("integer max", "2147483647::integer".into()));
            values.push(value("-1", "(-1)::integer".into()));
        }
        "interval" => {
            values.push(value("interval min", literal("-178000000 years", "interval")));
            values.push(value("interval max", literal("178000000 years", "interval")));
            values.push(value("zero interval", literal("0", "interval")));
        }
        "uuid" => values.push(value("nil uuid", literal("00000000-0000-0000-0000-000000000000", "uuid"))),
        "regclass" => {
            values.push(value("regclass 0", "0::oid::regclass".into()));
            values.push(value("dangling regclass", "4294967295::oid::regclass".into()));
            values.push(value("system catalog", literal("pg_catalog.pg_class", "regclass")));
            values.push(value("registry table", literal("multitenancy.tenants", "regclass")));
        }
        "oid" => {
            values.push(value("oid 0", "0::oid".into()));
            values.push(value("dangling oid", "4294967295::oid".into()));
        }
        "jsonb" | "json" => {
            values.push(value("json null", literal("null", ty)));
            values.push(value("json array", literal("[1, \"x\"]", ty)));
            values.push(value("json string", literal("\"x\"", ty)));
            values.push(value("1 MB json string", format!("to_jsonb({big})::{ty}")));
            values.push(value("1 MB json key", format!("jsonb_build_object({big}, 1)::{ty}")));
        }
        "bytea" => {
            values.push(value("empty bytea", literal("\\x", "bytea")));
            values.push(value("1 MB bytea", format!("convert_to({big}, 'UTF8')")));
        }
        "boolean" => values.push(value("true", "true".into())),
        "timestamp with time zone" => {
            values.push(value("infinity", literal("infinity", "timestamptz")));
            values.push(value("-infinity", literal("-infinity", "timestamptz")));
        }
        "record" => {
            // NULL::record is not a valid cast target for an untyped NULL everywhere; a NULL row
            // of a known row type is.
            values[0].sql = "(NULL::pg_catalog.pg_namespace)".into();
            values.push(value("wrong record ROW(1, 'x')", "ROW(1, 'x'::text)".into()));
            values.push(value("empty record ROW()", "ROW()".into()));
            values.push(value("record of NULLs", "ROW(NULL::int, NULL::text)".into()));
            values.push(value("record with 1 MB field", format!("ROW({big})")));
            values.push(value("catalog row", "(SELECT c FROM pg_catalog.pg_class c LIMIT 1)".into()));
        }
        _ => {}
    }
    values
}

fn quote_ident(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The call. A trigger function's result cannot be sent to a client (which would fail after
/// the function ran): `IS NULL` makes a call that is not refused succeed.
fn call_sql(f: &Function, args: &[String]) -> String {
    let call = format!("multitenancy.{}({})", quote_ident(&f.name), args.join(", "));
    match (f.kind.as_str(), f.trigger) {
        ("p", _) => format!("CALL {call}"),
        (_, true) => format!("SELECT {call} IS NULL"),
        _ => format!("SELECT {call}"),
    }
}

/// What a call did.
#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    Error(Box<DbError>),
    /// The connection is gone (a crash, a FATAL, or a broken protocol).
    Lost(String),
}

/// Who calls, and with which context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Caller {
    app: bool,
    context: bool,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "as {}, {}",
            if self.app { APP } else { SUPERUSER },
            if self.context { "tenant acme set, as its owner" } else { "no tenant context" }
        )
    }
}

/// One fuzz call: `sql` in a transaction of its own (rolled back), after `tenant_set('acme')` as
/// acme's owner ([`OWNER_USER`]) when the caller has a context.
fn run(client: &mut Client, caller: Caller, sql: &str) -> Outcome {
    let lost = |e: postgres::Error| Outcome::Lost(e.to_string());
    if let Err(e) = client.batch_execute(&format!("BEGIN; {CALL_LIMITS}")) {
        return lost(e);
    }
    if caller.context {
        let set =
            format!("SELECT set_config('multitenancy.user_id', '{OWNER_USER}', true), multitenancy.tenant_set('acme')");
        if let Err(e) = client.batch_execute(&set) {
            return match e.as_db_error() {
                Some(db) => panic!("{caller}: tenant_set('acme') failed before the call: {}", db.message()),
                None => lost(e),
            };
        }
    }
    let outcome = match client.batch_execute(sql) {
        Ok(()) => Outcome::Ok,
        Err(e) => match e.as_db_error() {
            Some(db) if !matches!(db.severity(), "FATAL" | "PANIC") => Outcome::Error(Box::new(db.clone())),
            Some(db) => Outcome::Lost(format!("{} {}: {}", db.severity(), db.code().code(), db.message())),
            None => return lost(e),
        },
    };
    if let Err(e) = client.batch_execute("ROLLBACK") {
        return lost(e);
    }
    match client.simple_query("SELECT 1") {
        Ok(_) => outcome,
        Err(e) => lost(e),
    }
}

/// A failed check of one call.
#[derive(Debug)]
struct Failure {
    kind: Kind,
    call: String,
    caller: String,
    argument: String,
    value: String,
    sqlstate: String,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Crash,
    Internal,
    WrongArgumentNamed,
    NullNotNamed,
    LongMessage,
    Other,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Crash => "server crash or lost connection",
            Kind::Internal => "internal error (SQLSTATE class XX)",
            Kind::WrongArgumentNamed => "a NULL argument reported as another argument",
            Kind::NullNotNamed => "a NULL argument not named (neither its parameter name nor NULL)",
            Kind::LongMessage => "message + detail + hint of 2000 characters or more",
            Kind::Other => "other",
        }
    }
}

/// An error's DETAIL, without the Rust backtrace pgrx appends to it when the server runs with
/// `RUST_BACKTRACE` set (as it inherits it from `cargo test` here): that is not what a user of a
/// production server sees.
fn detail(error: &DbError) -> &str {
    let detail = error.detail().unwrap_or("");
    match backtrace_start(detail) {
        Some(at) => detail[..at].trim_end(),
        None => detail,
    }
}

/// Where a Rust backtrace (`   0: <frame>` lines) starts in `detail`.
fn backtrace_start(detail: &str) -> Option<usize> {
    let mut offset = 0;
    for line in detail.split_inclusive('\n') {
        if line.trim_start().starts_with("0: ") {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

fn cut(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out.replace('\n', "\\n")
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `text` contains `word` as a whole word (`_` counts as a word character).
fn mentions(text: &str, word: &str) -> bool {
    !word.is_empty()
        && text.match_indices(word).any(|(i, _)| {
            !text[..i].chars().next_back().is_some_and(is_word_char)
                && !text[i + word.len()..].chars().next().is_some_and(is_word_char)
        })
}

/// The ways a message may name parameter `name`: as is, without a `p_` prefix, with spaces.
fn spellings(name: &str) -> Vec<String> {
    let bare = name.strip_prefix("p_").unwrap_or(name);
    let mut out = vec![name.to_lowercase(), bare.to_lowercase(), bare.replace('_', " ").to_lowercase()];
    out.dedup();
    out.retain(|s| !s.is_empty());
    out
}

/// The argument numbers a message cites ("argument 2", "arg 2", "parameter $2").
fn cited_positions(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for marker in ["argument ", "arg ", "parameter $", "argument $", "$"] {
        for (i, _) in text.match_indices(marker) {
            // "parameter $2" is found by its own marker already.
            if marker == "$" && (text[..i].ends_with("parameter ") || text[..i].ends_with("argument ")) {
                continue;
            }
            let digits: String = text[i + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
        }
    }
    out
}

/// How the report names argument `position` of `f`.
fn argument_label(f: &Function, position: Option<usize>) -> String {
    match position {
        None => "-".to_string(),
        Some(i) if f.args[i].name.is_empty() => format!("${}", i + 1),
        Some(i) => format!("{} (${})", f.args[i].name, i + 1),
    }
}

/// The checks of one call's outcome; `baseline` is the same function's outcome with every
/// argument valid, for the same caller (an error it shares was not caused by the NULL).
fn check_call(
    f: &Function,
    position: Option<usize>,
    value: &Value,
    outcome: &Outcome,
    baseline: Option<&Outcome>,
    caller: Caller,
    failures: &mut Vec<Failure>,
) {
    let argument = argument_label(f, position);
    let mut fail = |kind: Kind, sqlstate: &str, message: String| {
        failures.push(Failure {
            kind,
            call: f.signature.clone(),
            caller: caller.to_string(),
            argument: argument.clone(),
            value: value.kind.clone(),
            sqlstate: sqlstate.to_string(),
            message,
        })
    };
    let error = match outcome {
        Outcome::Ok => return,
        Outcome::Lost(why) => return fail(Kind::Crash, "-", cut(why, 200)),
        Outcome::Error(error) => error,
    };
    let code = error.code().code();
    let detail = detail(error);
    let text = format!("{}\n{detail}\n{}", error.message(), error.hint().unwrap_or(""));
    let short = cut(error.message(), 200);
    if code.starts_with("XX") {
        fail(Kind::Internal, code, short.clone());
    }
    let length =
        error.message().chars().count() + detail.chars().count() + error.hint().map_or(0, |h| h.chars().count());
    if length >= MAX_ERROR_TEXT {
        fail(Kind::LongMessage, code, format!("[{length} characters] {short}"));
    }
    if code == "57014" || code == "55P03" {
        fail(Kind::Other, code, format!("timed out or waited for a lock: {short}"));
    }
    let Some(i) = position.filter(|_| value.null) else { return };
    // An error the valid call makes too (no context, not allowed, ...) is not about this NULL.
    if let Some(Outcome::Error(base)) = baseline {
        if base.code() == error.code() && base.message() == error.message() {
            return;
        }
    }
    let lower = text.to_lowercase();
    let names_it = spellings(&f.args[i].name).iter().any(|s| mentions(&lower, s));
    let says_null = lower.contains("null");
    let positions = cited_positions(&lower);
    // Another parameter said to be NULL ("key must not be NULL" for a NULL tenant).
    let blamed: Vec<&str> = f
        .args
        .iter()
        .enumerate()
        .filter(|(j, p)| *j != i && !p.name.is_empty())
        .filter(|(_, p)| {
            spellings(&p.name).iter().any(|s| {
                ["must not be null", "is null", "cannot be null", "may not be null", "is required"]
                    .iter()
                    .any(|tail| mentions(&lower, &format!("{s} {tail}")))
            })
        })
        .map(|(_, p)| p.name.as_str())
        .collect();
    if positions.iter().any(|&n| n != i + 1) {
        fail(Kind::WrongArgumentNamed, code, format!("cites argument {positions:?}: {short}"));
    } else if !names_it && !blamed.is_empty() {
        fail(Kind::WrongArgumentNamed, code, format!("blames {blamed:?}, not {:?}: {short}", f.args[i].name));
    } else if !names_it && !says_null && positions.is_empty() {
        fail(Kind::NullNotNamed, code, short);
    }
}

/// A separate superuser connection still answers. When it does not (after a crash the
/// postmaster restarts every backend), this waits up to 30 s for a new one, and says what it saw.
fn server_alive(monitor: &mut Client, server: &Server) -> Result<(), String> {
    let first = match monitor.simple_query("SELECT 1") {
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mut client) = Client::connect(&server.url("postgres", SUPERUSER), NoTls) {
            if client.simple_query("SELECT 1").is_ok() {
                return Err(format!(
                    "the separate superuser connection was lost ({first}); a new one worked after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    Err(format!("the separate superuser connection was lost ({first}), and no new one for 30 s"))
}

fn log_tail(server: &Server) -> String {
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].iter().map(|l| cut(l, 300)).collect::<Vec<_>>().join("\n")
}

/// The fuzz fixture on top of [`Orders`]: acme with an owner, a member, a verified and an
/// unverified domain; a plan "pro" with a metered limit; a signing key and a token; a suspended
/// tenant "hooli" and a deleted one "umbrella"; an unprotected table `notes` and an exempt one
/// `countries`.
fn fixture(o: &Orders) -> Fixture {
    let mut su = o.db.superuser();
    let one = |su: &mut Client, sql: &str| -> String {
        su.query_one(sql, &[]).unwrap_or_else(|e| panic!("fixture: {sql}: {e}")).get(0)
    };
    su.batch_execute(&format!(
        "SELECT multitenancy.member_add('acme', '{OWNER_USER}', 'owner');
         SELECT multitenancy.member_add('acme', '{MEMBER_USER}', 'member');
         SELECT multitenancy.plan_set('pro', '{{\"rows\": 1000, \"api_calls\": 100}}', '{{\"beta\": true}}');
         SELECT multitenancy.signing_key_add('k1', '{BYTES}'::bytea);
         SELECT multitenancy.tenant_create('Hooli', 'hooli');
         SELECT multitenancy.tenant_suspend('hooli', 'surface fuzz test');"
    ))
    .unwrap_or_else(|e| panic!("fixture: {e}"));
    let umbrella = one(&mut su, "SELECT multitenancy.tenant_create('Umbrella', 'umbrella')::text");
    su.batch_execute("SELECT multitenancy.tenant_delete('umbrella')").unwrap();
    let verified = one(&mut su, "SELECT multitenancy.domain_add('acme', 'acme.example.com')");
    su.execute("SELECT multitenancy.domain_verify('acme.example.com', $1)", &[&verified]).unwrap();
    let domain_token = one(&mut su, "SELECT multitenancy.domain_add('acme', 'shop.acme.example')");
    let signed_token = one(&mut su, &format!("SELECT multitenancy.tenant_token('acme', '{OWNER_USER}', '1 hour')"));
    o.db.legacy("CREATE TABLE notes (body text)");
    create_exempt_countries(&mut o.db.owner());
    Fixture { acme: o.a.clone(), umbrella, signed_token, domain_token }
}

#[test]
fn every_function_survives_hostile_arguments() {
    // A server of its own: a crash here must not take other tests' connections with it. ERRORs
    // are not logged (hostile calls fail by the thousand, some with 1 MB statements); crashes
    // (LOG level) are.
    let server = Server::private(
        "-c shared_preload_libraries=multitenancy -c log_min_messages=log -c log_min_error_statement=panic",
    );
    let o = Orders::on(server, "surface_fuzz", 3, 2);
    let fx = fixture(&o);
    let mut su = o.db.superuser();
    let functions = functions(&mut su);
    assert!(functions.len() > 20, "ground truth: the schema has the extension's functions, got {}", functions.len());
    let mut app = o.db.app();
    let mut monitor = server.connect("postgres", SUPERUSER);

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut calls = 0usize;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut crashed = false;
    let mut backtraces = 0usize;
    // MT_SURFACE_VERBOSE=1 prints every call and what it did.
    let verbose = std::env::var_os("MT_SURFACE_VERBOSE").is_some();
    'functions: for f in &functions {
        let mut callers = vec![Caller { app: false, context: false }, Caller { app: false, context: true }];
        if f.public {
            callers.extend([Caller { app: true, context: false }, Caller { app: true, context: true }]);
        }
        // The calls: trigger functions only as they are (they must refuse); every other function
        // once with valid arguments, then with each hostile value in each position in turn.
        let valid: Vec<Option<String>> = f.args.iter().map(|p| plausible(&f.name, p, &fx)).collect();
        if let Some(i) = valid.iter().position(Option::is_none) {
            failures.push(Failure {
                kind: Kind::Other,
                call: f.signature.clone(),
                caller: "-".into(),
                argument: format!("{} (${})", f.args[i].name, i + 1),
                value: "-".into(),
                sqlstate: "-".into(),
                message: format!("this test has no valid value for type {}: add one to plausible()", f.args[i].ty),
            });
            continue;
        }
        if !matches!(f.kind.as_str(), "f" | "p") {
            failures.push(Failure {
                kind: Kind::Other,
                call: f.signature.clone(),
                caller: "-".into(),
                argument: "-".into(),
                value: "-".into(),
                sqlstate: "-".into(),
                message: format!("prokind {:?}: this test calls functions and procedures only", f.kind),
            });
            continue;
        }
        let valid: Vec<String> = valid.into_iter().map(Option::unwrap).collect();
        let mut variants: Vec<(Option<usize>, Value, String)> =
            vec![(None, value("valid arguments", String::new()), call_sql(f, &valid))];
        if !f.trigger {
            for (i, param) in f.args.iter().enumerate() {
                for v in hostile(&param.ty) {
                    let mut args = valid.clone();
                    args[i] = v.sql.clone();
                    let sql = call_sql(f, &args);
                    variants.push((Some(i), v, sql));
                }
            }
        }
        for caller in callers {
            let client = if caller.app { &mut app } else { &mut su };
            let mut baseline = None;
            for (position, v, sql) in &variants {
                calls += 1;
                let outcome = run(client, caller, sql);
                match &outcome {
                    Outcome::Error(e) => {
                        *errors.entry(e.code().code().to_string()).or_default() += 1;
                        backtraces += usize::from(e.detail().and_then(backtrace_start).is_some());
                    }
                    Outcome::Ok if f.trigger => failures.push(Failure {
                        kind: Kind::Other,
                        call: f.signature.clone(),
                        caller: caller.to_string(),
                        argument: "-".into(),
                        value: "called directly".into(),
                        sqlstate: "-".into(),
                        message: "a trigger function called directly succeeded; it must refuse".into(),
                    }),
                    _ => {}
                }
                if verbose {
                    let said = match &outcome {
                        Outcome::Ok => "ok".to_string(),
                        Outcome::Error(e) => format!("{} {}", e.code().code(), cut(e.message(), 160)),
                        Outcome::Lost(why) => format!("LOST {why}"),
                    };
                    let arg = position.map_or("-".to_string(), |i| format!("${}", i + 1));
                    eprintln!("{} [{caller}] {arg} = {}: {said}", f.signature, v.kind);
                }
                check_call(f, *position, v, &outcome, baseline.as_ref(), caller, &mut failures);
                let alive = server_alive(&mut monitor, server);
                if matches!(outcome, Outcome::Lost(_)) || alive.is_err() {
                    failures.push(Failure {
                        kind: Kind::Crash,
                        call: f.signature.clone(),
                        caller: caller.to_string(),
                        argument: argument_label(f, *position),
                        value: v.kind.clone(),
                        sqlstate: "-".into(),
                        message: format!(
                            "{}; the call was: {}",
                            alive.err().unwrap_or_else(|| "a new superuser connection works".into()),
                            cut(sql, 400)
                        ),
                    });
                    eprintln!("server log after the crash:\n{}", log_tail(server));
                    crashed = true;
                    break 'functions;
                }
                if position.is_none() {
                    baseline = Some(outcome);
                }
            }
        }
    }
    eprintln!(
        "surface fuzz: {} functions, {calls} calls in {:.1} s{}; errors by SQLSTATE: {errors:?}; \
         {backtraces} error(s) had a Rust backtrace as DETAIL (not counted in their length)",
        functions.len(),
        started.elapsed().as_secs_f64(),
        if crashed { " (stopped at a crash)" } else { "" }
    );

    failures.sort_by(|a, b| (a.kind, &a.call, &a.caller).cmp(&(b.kind, &b.call, &b.caller)));
    let mut report = String::new();
    let mut by_kind: HashMap<Kind, usize> = HashMap::new();
    for failure in &failures {
        *by_kind.entry(failure.kind).or_default() += 1;
    }
    let mut current = None;
    for failure in &failures {
        if current != Some(failure.kind) {
            current = Some(failure.kind);
            writeln!(report, "\n== {} ({})", failure.kind.title(), by_kind[&failure.kind]).unwrap();
        }
        writeln!(
            report,
            "- {} [{}] argument {} = {}: {} {}",
            failure.call, failure.caller, failure.argument, failure.value, failure.sqlstate, failure.message
        )
        .unwrap();
    }
    assert!(failures.is_empty(), "{} call(s) failed the hostile-argument checks:\n{report}", failures.len());
}
