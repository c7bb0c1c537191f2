#!/usr/bin/env bash
# The mt-move benchmark: export and import throughput of one tenant against a plain COPY of the
# same rows to and from the same files, as ratios measured in the same run (issue: >= 0.8x on
# >= 1 000 000 rows).
#
#   benches/move.sh [--rows N] [--rounds N]      standalone: builds, installs, starts a server
#   benches/run.sh --only move [--rounds N]      sourced by run.sh, on its server
#
#   --rows N     rows of tenant a, the tenant that is moved (default 1000000; $MT_MOVE_ROWS
#                under run.sh); tenant b has a tenth as many, in the same table
#   --rounds N   rounds per direction (default 3; under run.sh its --rounds)
#
# Standalone, it runs benches/run.sh --only move, which builds the extension in release mode,
# installs it into PostgreSQL 15 and starts its server. It builds mt-move (cargo build --release
# -p multitenancy-move).
#
# Database movebench: the extension and one table, items (id bigserial primary key, name text,
# qty int, tags text[], doc jsonb, note text), created and tenant-enabled in one transaction;
# tenants a (N rows) and b (N/10 rows), loaded as an application would, under tenant_set in one
# transaction per tenant. Everything below runs as the superuser (mt-move is a DBA's tool; the
# superuser bypasses row-level security, which is what lets the plain COPY write the table).
#
# Export, each round, both variants in alternating order, each writing a fresh file:
#   mt-move       mt-move --quiet export --from <movebench> --tenant a --archive DIR
#                 (one REPEATABLE READ transaction, COPY (SELECT <columns> FROM items WHERE
#                 tenant_id = current_tenant_id()) TO STDOUT (FORMAT csv, HEADER), counted,
#                 hashed, fsynced; then manifest.json)
#   plain COPY    psql \copy (SELECT <columns> FROM items WHERE tenant_id = '<a>') TO 'FILE'
#                 (FORMAT csv, HEADER)
# Import, each round, into two fresh copies (CREATE DATABASE ... TEMPLATE, then CHECKPOINT,
# untimed) of movetarget, which has the extension and the same enabled table, empty:
#   mt-move       mt-move --quiet import --to <copy> --archive DIR --as a2
#                 (one transaction: tenant_import_begin, COPY into a temporary table, the key
#                 collision check, INSERT ... SELECT into items, tenant_import_end)
#   plain COPY    psql: BEGIN; SELECT tenant_set('a2'); \copy items (<columns>) FROM
#                 '<the archive's csv file>' (FORMAT csv, HEADER); COMMIT; into the same table
#                 (tenant a2 created beforehand, untimed; tenant_id from the column default, the
#                 usage-counting triggers fire as for any write)
# Both are timed from the shell around the whole client process (connection included). A
# round's ratio is plain COPY seconds / mt-move seconds, the throughput of mt-move relative to
# COPY's; the result is the median over the rounds.
#
# Not part of the test command; Debian 12, as root.

MOVE_ROWS=${MT_MOVE_ROWS:-1000000}
MOVE_COLUMNS="id, name, qty, tags, doc, note"

move_psql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
move_conn() { echo "host=127.0.0.1 port=$PORT user=postgres dbname=$1"; }
move_now() { date +%s.%N; }
move_secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
move_rate() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", (s > 0 ? n / s : 0)}'; }

# The schema of both databases: the extension and the enabled table.
move_schema_sql() {
    cat <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION multitenancy;
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
BEGIN;
CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, qty int NOT NULL, tags text[], doc jsonb, note text);
SELECT multitenancy.tenant_enable('items');
COMMIT;
SQL
}

# Rows of one tenant, loaded under its context in one transaction.
move_load_sql() { # slug, rows
    cat <<SQL
BEGIN;
SELECT multitenancy.tenant_set('$1');
INSERT INTO items (name, qty, tags, doc, note)
SELECT 'item ' || g, g % 1000, ARRAY['tag' || g % 7, 'tag' || g % 11],
       jsonb_build_object('sku', 'SKU-' || g, 'price', (g % 10000) / 100.0, 'active', g % 3 = 0),
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'a note, with "quotes" and a comma ' || md5(g::text) END
  FROM generate_series(1, $2) g;
COMMIT;
SQL
}

run_move() {
    local MOVE_DIR="$DIR/move" mt round order v t0 t1
    say "move: building mt-move (release)"
    cargo build --release -q -p multitenancy-move >&2
    mt="$PWD/target/release/mt-move"
    rm -rf "$MOVE_DIR" && mkdir -p "$MOVE_DIR"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$MOVE_DIR"

    say "move: database movebench, tenant a with $MOVE_ROWS rows, tenant b with $((MOVE_ROWS / 10))"
    move_psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS movebench" -c "DROP DATABASE IF EXISTS movetarget" \
        -c "CREATE DATABASE movebench" -c "CREATE DATABASE movetarget"
    move_schema_sql | move_psql -d movebench >/dev/null
    move_schema_sql | move_psql -d movetarget >/dev/null
    move_psql -d movebench -c "SELECT multitenancy.tenant_create('Tenant A', 'a')" \
        -c "SELECT multitenancy.tenant_create('Tenant B', 'b')" >/dev/null
    move_load_sql a "$MOVE_ROWS" | move_psql -d movebench >/dev/null
    move_load_sql b $((MOVE_ROWS / 10)) | move_psql -d movebench >/dev/null
    move_psql -d movebench -c "VACUUM ANALYZE items" -c "CHECKPOINT"
    move_psql -d movebench -At -c "SELECT pg_prewarm('items')" >/dev/null
    local tenant_a bytes
    tenant_a=$(move_psql -d movebench -At -c "SELECT id FROM multitenancy.tenants WHERE slug = 'a'")

    # Export.
    say "move: export, $ROUNDS rounds of mt-move export and plain COPY TO a file, alternating"
    local export_ratios="" export_mt="" export_copy="" archive="$MOVE_DIR/archive"
    for ((round = 1; round <= ROUNDS; round++)); do
        order="mt-move copy"; [ $((round % 2)) -eq 0 ] && order="copy mt-move"
        declare -A secs=()
        for v in $order; do
            if [ "$v" = mt-move ]; then
                rm -rf "$archive"
                t0=$(move_now)
                "$mt" --quiet export --from "$(move_conn movebench)" --tenant a --archive "$archive" 2>"$MOVE_DIR/mt.err" ||
                    { cat "$MOVE_DIR/mt.err" >&2; return 1; }
                t1=$(move_now)
            else
                rm -f "$MOVE_DIR/copy.csv"
                t0=$(move_now)
                move_psql -d movebench -c "\\copy (SELECT $MOVE_COLUMNS FROM items WHERE tenant_id = '$tenant_a') TO '$MOVE_DIR/copy.csv' (FORMAT csv, HEADER)"
                t1=$(move_now)
            fi
            secs[$v]=$(move_secs "$t0" "$t1")
        done
        printf '    round %d  mt-move %7.3f s  plain COPY %7.3f s  ratio %.3f\n' "$round" "${secs[mt-move]}" "${secs[copy]}" \
            "$(ratio "${secs[copy]}" "${secs[mt-move]}")" >&2
        export_ratios+=" $(ratio "${secs[copy]}" "${secs[mt-move]}")"
        export_mt+=" ${secs[mt-move]}" export_copy+=" ${secs[copy]}"
    done
    # The same rows in both files.
    local file
    file="$archive/$(sed -n 's/^ *"file": *"\([^"]*\)".*/\1/p' "$archive/manifest.json" | head -1)"
    if [ "$(wc -l <"$file")" != "$(wc -l <"$MOVE_DIR/copy.csv")" ] || [ "$(sort "$file" | md5sum)" != "$(sort "$MOVE_DIR/copy.csv" | md5sum)" ]; then
        echo "move: the archive's file $file and the plain COPY's file differ" >&2
        return 1
    fi
    bytes=$(stat -c %s "$file")

    # Import: fresh copies of movetarget, untimed.
    say "move: import, $ROUNDS rounds of mt-move import and plain COPY FROM the archive's file, alternating"
    move_psql -d postgres -c "ALTER DATABASE movetarget WITH IS_TEMPLATE true"
    local import_ratios="" import_mt="" import_copy=""
    for ((round = 1; round <= ROUNDS; round++)); do
        move_psql -d postgres -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS move_mt" -c "CREATE DATABASE move_mt TEMPLATE movetarget" \
            -c "DROP DATABASE IF EXISTS move_copy" -c "CREATE DATABASE move_copy TEMPLATE movetarget"
        move_psql -d move_copy -c "SELECT multitenancy.tenant_create('Tenant A2', 'a2')" >/dev/null
        move_psql -d postgres -c "CHECKPOINT"
        order="mt-move copy"; [ $((round % 2)) -eq 0 ] && order="copy mt-move"
        declare -A secs=()
        for v in $order; do
            if [ "$v" = mt-move ]; then
                t0=$(move_now)
                "$mt" --quiet import --to "$(move_conn move_mt)" --archive "$archive" --as a2 2>"$MOVE_DIR/mt.err" ||
                    { cat "$MOVE_DIR/mt.err" >&2; return 1; }
                t1=$(move_now)
            else
                t0=$(move_now)
                move_psql -d move_copy -c "BEGIN" -c "SELECT multitenancy.tenant_set('a2')" \
                    -c "\\copy items ($MOVE_COLUMNS) FROM '$file' (FORMAT csv, HEADER)" -c "COMMIT" >/dev/null
                t1=$(move_now)
            fi
            secs[$v]=$(move_secs "$t0" "$t1")
        done
        printf '    round %d  mt-move %7.3f s  plain COPY %7.3f s  ratio %.3f\n' "$round" "${secs[mt-move]}" "${secs[copy]}" \
            "$(ratio "${secs[copy]}" "${secs[mt-move]}")" >&2
        import_ratios+=" $(ratio "${secs[copy]}" "${secs[mt-move]}")"
        import_mt+=" ${secs[mt-move]}" import_copy+=" ${secs[copy]}"
        if [ "$round" -eq 1 ]; then move_check; fi
    done

    local m c
    row ""
    row "| $MOVE_ROWS rows of one tenant | mt-move s | mt-move rows/s | plain COPY s | plain COPY rows/s | ratio (target >= 0.8) |"
    row "|---|---:|---:|---:|---:|---:|"
    m=$(echo "$export_mt" | median) c=$(echo "$export_copy" | median)
    row "| export: mt-move export vs \\copy (SELECT ...) TO file | $m | $(move_rate "$MOVE_ROWS" "$m") | $c |" \
        "$(move_rate "$MOVE_ROWS" "$c") | **$(echo "$export_ratios" | median | awk '{printf "%.3f", $1}')** |"
    m=$(echo "$import_mt" | median) c=$(echo "$import_copy" | median)
    row "| import: mt-move import --as vs \\copy items FROM file under tenant_set | $m | $(move_rate "$MOVE_ROWS" "$m") | $c |" \
        "$(move_rate "$MOVE_ROWS" "$c") | **$(echo "$import_ratios" | median | awk '{printf "%.3f", $1}')** |"
    row ""
    row "Move: the file is $bytes bytes; the source table also holds tenant b's $((MOVE_ROWS / 10)) rows. Seconds are medians over"
    row "$ROUNDS rounds, timed around the client process; each ratio (plain COPY s / mt-move s) is the median of the rounds' ratios."
}

# After the first import round: both targets hold the tenant's rows, counted the same.
move_check() {
    local v got=()
    for v in move_mt move_copy; do
        got+=("$(move_psql -d "$v" -At -F ' ' -c "
            SELECT (SELECT count(*) FROM items i WHERE i.tenant_id = t.id),
                   (SELECT u.row_count FROM multitenancy.table_usage u WHERE u.tenant_id = t.id AND u.relid = 'items'::regclass)
              FROM multitenancy.tenants t WHERE t.slug = 'a2'")")
    done
    if [ "${got[0]}" != "$MOVE_ROWS $MOVE_ROWS" ] || [ "${got[1]}" != "${got[0]}" ]; then
        echo "move: unexpected import (rows, counted rows of a2): mt-move ${got[0]}, plain COPY ${got[1]}" >&2
        return 1
    fi
}

# Standalone: benches/run.sh --only move, which builds, installs and starts the server.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    cd "$(dirname "$0")/.."
    ROUNDS=3
    while [ $# -gt 0 ]; do
        case $1 in
            --rows) MOVE_ROWS=$2; shift 2 ;;
            --rounds) ROUNDS=$2; shift 2 ;;
            -h|--help) sed -n '2,/^# Not part/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        esac
    done
    MT_MOVE_ROWS=$MOVE_ROWS exec benches/run.sh --only move --rounds "$ROUNDS"
fi
