#!/usr/bin/env bash
# The demo: builds multitenancy, installs it into PostgreSQL 15, starts a local server, creates
# two tenants and a tenant-enabled table, and shows each tenant seeing only its own rows — and
# the error without a tenant context — as a non-superuser application role that does not own
# the table. Leaves the server running for you to explore with psql.
#
# Debian 12, as root. Installs whatever is missing first (scripts/setup.sh). Safe to re-run: it
# replaces the previous demo server. MT_DEMO_PORT picks the port (default 5499).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

. scripts/paths.sh
PG_CONFIG=$PG15_CONFIG
BIN=$($PG_CONFIG --bindir)
PORT=${MT_DEMO_PORT:-5499}
DIR=${MT_DEMO_DIR:-/tmp/multitenancy-demo}
say() { printf '\n\033[1;34m==>\033[0m \033[1m%s\033[0m\n' "$*"; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

say "building and installing the extension into PostgreSQL 15"
cargo pgrx install --pg-config "$PG_CONFIG" 2>&1 | grep -E "Installing|Finished|error" || true

say "starting a fresh PostgreSQL 15 server on 127.0.0.1:$PORT (data in $DIR)"
if [ -f "$DIR/data/postmaster.pid" ]; then as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is in use by another server; pick another with MT_DEMO_PORT=..." >&2
    exit 1
fi
rm -rf "$DIR"
mkdir -p "$DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
as_postgres "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c shared_preload_libraries=multitenancy" start >/dev/null

psql_as() { # role, then psql arguments
    local role=$1; shift
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U "$role" -d demo "$@"
}
"$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE demo"

say "DBA (superuser): install the extension, create roles and two tenants"
psql_as postgres -e <<'SQL'
CREATE EXTENSION multitenancy;
CREATE ROLE demo_owner LOGIN;                             -- runs migrations, owns the tables
CREATE ROLE demo_app LOGIN NOSUPERUSER NOBYPASSRLS;       -- what the application connects as
GRANT CREATE ON SCHEMA public TO demo_owner;
GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) TO demo_owner;
SELECT multitenancy.tenant_create('Acme Corp', 'acme') AS acme,
       multitenancy.tenant_create('Globex', 'globex') AS globex;
SQL

say "migration (demo_owner): an ordinary table, then tenant_enable, in one transaction"
psql_as demo_owner -e <<'SQL'
BEGIN;
CREATE TABLE orders (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item   text NOT NULL,
    amount numeric(10,2) NOT NULL
);
SELECT multitenancy.tenant_enable('orders');
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO demo_app;
COMMIT;
SQL
psql_as demo_owner -c '\d orders'

say "the DDL guard: a later migration cannot weaken the protection, or forget it on a new table"
psql_as demo_owner -e -v ON_ERROR_STOP=0 <<'SQL' || true
ALTER TABLE orders NO FORCE ROW LEVEL SECURITY;
CREATE TABLE notes (body text);
SQL

say "application (demo_app): each tenant writes plain SQL inside its transaction"
psql_as demo_app -e <<'SQL'
BEGIN;
SELECT multitenancy.tenant_set('acme');
INSERT INTO orders (item, amount) VALUES ('anvil', 99.00), ('rocket skates', 249.50);
COMMIT;
BEGIN;
SELECT multitenancy.tenant_set('globex');
INSERT INTO orders (item, amount) VALUES ('hammock', 35.00);
COMMIT;
SQL

show_tenant() { # slug
    say "as tenant $1, demo_app sees only $1's rows"
    psql_as demo_app -e -v tenant="$1" <<'SQL'
BEGIN;
SELECT multitenancy.tenant_set(:'tenant');
SELECT id, item, amount, tenant_id FROM orders ORDER BY id;
COMMIT;
SQL
}
show_tenant acme
show_tenant globex

say "without a tenant context: an error, never all rows"
psql_as demo_app -e -v ON_ERROR_STOP=0 <<'SQL' || true
SELECT id, item, amount FROM orders;
\echo SQLSTATE :LAST_ERROR_SQLSTATE (invalid_authorization_specification)
SQL

say "signed mode: demo_signed may only use a tenant token minted by a trusted backend"
psql_as postgres -e <<'SQL'
SELECT multitenancy.signing_key_add('demo-key', decode(md5('demo') || md5('key'), 'hex'));
CREATE ROLE demo_signed LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT SELECT ON orders TO demo_signed;
ALTER ROLE demo_signed SET multitenancy.require_signed = on;
SQL
TOKEN=$(psql_as postgres -At -c "SELECT multitenancy.tenant_token('globex')")
psql_as demo_signed -e -v ON_ERROR_STOP=0 -v token="$TOKEN" <<'SQL' || true
BEGIN;
SELECT multitenancy.tenant_set('acme');                   -- refused for this role
ROLLBACK;
BEGIN;
SELECT multitenancy.tenant_set_signed(:'token');          -- verified: globex, for this transaction
SELECT id, item, amount FROM orders ORDER BY id;
COMMIT;
BEGIN;
SELECT multitenancy.tenant_set_signed(:'token');          -- a token works once
ROLLBACK;
SQL

say "the same table as the superuser (who bypasses row level security): all 3 rows exist"
psql_as postgres -c "SELECT o.id, o.item, o.amount, t.slug AS tenant FROM orders o JOIN multitenancy.tenants t ON t.id = o.tenant_id ORDER BY o.id"

say "the DBA's audit: no rows means healthy"
psql_as postgres -e -c "SELECT * FROM multitenancy.verify()"

cat <<EOF2

$(printf '\033[1mThe demo server is running.\033[0m') Explore it as the application role:

    psql "postgresql://demo_app@127.0.0.1:$PORT/demo"
      BEGIN; SELECT multitenancy.tenant_set('acme'); SELECT * FROM orders; COMMIT;

or as the DBA:  psql "postgresql://postgres@127.0.0.1:$PORT/demo"
(trust authentication, listening on 127.0.0.1 only.)
Stop it with:   runuser -u postgres -- $BIN/pg_ctl -D $DIR/data stop
EOF2
