#!/usr/bin/env bash
# The scale-out benchmark: a tenant's point select on a Citus cluster (a coordinator and two
# workers on this machine), routed by the tenant the planner puts into the query, against the same
# query naming the tenant in its WHERE clause — as ratios measured in one run.
#
#   benches/citus.sh [--tenants N] [--rows N] [--rounds N] [--seconds N] [--clients N]
#
# Builds the extension in release mode and Citus (scripts/citus.sh) for PostgreSQL 17, starts
# three servers of its own (as postgres, in $MT_BENCH_DIR, default /tmp/multitenancy-bench-citus,
# ports $MT_BENCH_PORT.. +2, default 5491-5493), distributes `orders` with tenant_distribute and
# drives pgbench as bench_app (NOSUPERUSER, NOBYPASSRLS, owns nothing) through the coordinator.
# Each transaction: BEGIN, tenant_set of a random tenant, the SELECT, COMMIT (Citus takes the
# tenant to the workers within a transaction block). The two variants run interleaved — each
# pgbench transaction picks one at random — so both see the same seconds of the same machine;
# a round's ratio compares their mean latencies, the result is the median over the rounds.
#
#   routed      SELECT ... FROM orders WHERE id = :id            (the policy supplies the tenant)
#   explicit    SELECT ... FROM orders WHERE tenant_id = '<tenant>' AND id = :id
#
# Beside them, the shape without routing: the same point select with the tenant as a value
# Citus cannot route on (`tenant_id = multitenancy.current_tenant_id_or_null()`, run as the
# superuser, whom row level security does not filter): one task per shard, what every
# tenant-context query cost on Citus before the planner knew the tenant. It runs as its own
# pgbench run (another role), right after each round.
#
# Not part of the test command; Debian 12, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

TENANTS=200 ROWS=200 ROUNDS=5 SECS=6 CLIENTS=4
while [ $# -gt 0 ]; do
    case $1 in
        --tenants) TENANTS=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
. scripts/paths.sh
PG_CONFIG=$PG17_CONFIG
BIN=$("$PG_CONFIG" --bindir)
PORT=${MT_BENCH_PORT:-5491}
PORTS=("$PORT" $((PORT + 1)) $((PORT + 2)))
DIR=${MT_BENCH_DIR:-/tmp/multitenancy-bench-citus}
say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_at() { local port=$1; shift; "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench "$@"; }

scripts/citus.sh "$PG_CONFIG"
say "building multitenancy (release) and installing it into PostgreSQL 17"
cargo pgrx install --release --pg-config "$PG_CONFIG" 2>&1 | grep -E "^error|Finished" >&2 || true

stop() { for p in "${PORTS[@]}"; do as_postgres "$BIN/pg_ctl" -D "$DIR/$p" -m fast -w stop >/dev/null 2>&1 || true; done; }
stop
rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres: "$DIR" 2>/dev/null || true
for p in "${PORTS[@]}"; do
    as_postgres "$BIN/initdb" -D "$DIR/$p" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    as_postgres env -u RUST_BACKTRACE HOME="$DIR" "$BIN/pg_ctl" -D "$DIR/$p" -l "$DIR/$p.log" -w -o \
        "-p $p -k $DIR -c listen_addresses=127.0.0.1 -c shared_preload_libraries=citus,multitenancy \
         -c citus.shard_count=32 -c citus.node_conninfo=sslmode=disable -c max_connections=200 \
         -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off" start >/dev/null
    "$BIN/psql" -X -q -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "CREATE DATABASE bench"
    psql_at "$p" -c "CREATE EXTENSION citus"
done
trap stop EXIT
psql_at "$PORT" -c "SELECT citus_set_coordinator_host('127.0.0.1', $PORT)" \
    -c "SELECT citus_add_node('127.0.0.1', ${PORTS[1]})" -c "SELECT citus_add_node('127.0.0.1', ${PORTS[2]})" >/dev/null

say "dataset: $TENANTS tenants x $ROWS orders, distributed over 32 shards on 2 workers"
psql_at "$PORT" -v tenants="$TENANTS" -v rows="$ROWS" >/dev/null <<'SQL'
CREATE EXTENSION multitenancy;
CREATE ROLE bench_owner LOGIN;
CREATE ROLE bench_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT CREATE ON SCHEMA public TO bench_owner;
GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid), multitenancy.tenant_distribute(regclass)
   TO bench_owner;
-- Tenant n has id 00000000-0000-4000-8000-<100000000000 + n>, so scripts name it from an integer.
INSERT INTO multitenancy.tenants (id, name, slug)
SELECT ('00000000-0000-4000-8000-' || (100000000000 + n)::text)::uuid, 'Tenant ' || n, 't' || n
  FROM generate_series(1, :tenants) n;
SET ROLE bench_owner;
BEGIN;
CREATE TABLE orders (id bigint NOT NULL, customer text, total int, created_at timestamptz DEFAULT now(),
                     PRIMARY KEY (id));
SELECT multitenancy.tenant_enable('orders');
COMMIT;
SELECT * FROM multitenancy.tenant_distribute('orders');
GRANT SELECT ON orders TO bench_app;
RESET ROLE;
-- Loaded as the superuser (past row level security): row r of tenant t has id r * tenants + t.
INSERT INTO orders (id, tenant_id, customer, total)
SELECT r * :tenants + t, ('00000000-0000-4000-8000-' || (100000000000 + t)::text)::uuid, 'c' || r, r
  FROM generate_series(1, :tenants) t, generate_series(0, :rows - 1) r;
ANALYZE orders;
SQL

mkdir -p "$DIR/scripts"
prelude='\set t random(1, :tenants)
\set r random(0, :rows - 1)
\set id :r * :tenants + :t
\set tu 100000000000 + :t
BEGIN;
SELECT multitenancy.tenant_set('"'"'00000000-0000-4000-8000-'"'"' || :tu);'
printf '%s\nSELECT id, customer, total FROM orders WHERE id = :id;\nCOMMIT;\n' "$prelude" >"$DIR/scripts/routed.sql"
printf '%s\nSELECT id, customer, total FROM orders WHERE tenant_id = '"'"'00000000-0000-4000-8000-:tu'"'"' AND id = :id;\nCOMMIT;\n' \
    "$prelude" >"$DIR/scripts/explicit.sql"
printf '%s\nSELECT id, customer, total FROM orders WHERE tenant_id = multitenancy.current_tenant_id_or_null() AND id = :id;\nCOMMIT;\n' \
    "$prelude" >"$DIR/scripts/fanout.sql"

declare -A LAT
run() { # user, script names...
    local user=$1; shift
    local args=() names=("$@") s
    for s in "$@"; do args+=(-f "$DIR/scripts/$s.sql"); done
    rm -rf "$DIR/log" && mkdir -p "$DIR/log" && chown postgres: "$DIR/log" 2>/dev/null || true
    (cd "$DIR/log" && "$BIN/pgbench" -n -M simple -h 127.0.0.1 -p "$PORT" -U "$user" -c "$CLIENTS" -j 2 -T "$SECS" \
        -l --log-prefix=tx -D tenants="$TENANTS" -D rows="$ROWS" "${args[@]}" bench >"$DIR/pgbench.out" 2>&1) ||
        { cat "$DIR/pgbench.out" >&2; return 1; }
    cat "$DIR"/log/tx.* >"$DIR/log/all"
    local means i mean count
    means=$(awk -v warmup=1 'NR == FNR { t = $5 + $6 / 1e6; if (first == "" || t < first) first = t; next }
        $5 + $6 / 1e6 >= first + warmup { n[$4]++; s[$4] += $3 }
        END { for (k in n) print k, s[k] / n[k], n[k] }' "$DIR/log/all" "$DIR/log/all" | sort -n)
    for i in "${!names[@]}"; do
        read -r _ mean count < <(awk -v k="$i" '$1 == k' <<<"$means")
        LAT[${names[$i]}]+=" $mean"
        printf '    %-10s %10.1f us  (%s transactions)\n' "${names[$i]}" "$mean" "$count" >&2
    done
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ratio_of() { # throughput of $1 relative to $2, per round, median
    paste -d' ' <(echo "${LAT[$2]}" | tr ' ' '\n' | grep .) <(echo "${LAT[$1]}" | tr ' ' '\n' | grep .) |
        awk '{print $1 / $2}' | median | awk '{printf "%.3f", $1}'
}
tps_of() { echo "${LAT[$1]}" | median | awk -v c="$CLIENTS" '{printf "%.0f", c * 1e6 / $1}'; }
tasks() { # the number of tasks in Citus's plan of a script's SELECT, for tenant 1
    local sql
    sql=$(grep '^SELECT id' "$DIR/scripts/$2.sql" | sed "s/:id/1/; s/:tu/100000000001/")
    "$BIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U "$1" -d bench <<SQL | sed -n 's/^ *Task Count: //p'
BEGIN;
SELECT multitenancy.tenant_set('00000000-0000-4000-8000-100000000001') \g /dev/null
EXPLAIN $sql
COMMIT;
SQL
}

for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS: ${SECS}s, $CLIENTS clients"
    run bench_app routed explicit
    run postgres fanout
done

RESULTS="$DIR/results.md"
{
    echo "| PostgreSQL 17, Citus 15.0devel, 1 coordinator + 2 workers, 32 shards, $TENANTS tenants x $ROWS rows, $CLIENTS clients, -M simple | tasks | tps | vs explicit WHERE |"
    echo "|---|---:|---:|---:|"
    echo "| routed: tenant context, \`WHERE id = :id\` (bench_app) | $(tasks bench_app routed) | $(tps_of routed) | $(ratio_of routed explicit) (target >= 0.9) |"
    echo "| explicit: \`WHERE tenant_id = '<tenant>' AND id = :id\` (bench_app) | $(tasks bench_app explicit) | $(tps_of explicit) | 1 |"
    echo "| not routed: \`tenant_id = current_tenant_id_or_null()\` (superuser, own runs) | $(tasks postgres fanout) | $(tps_of fanout) | $(ratio_of fanout explicit) |"
} | tee "$RESULTS"
