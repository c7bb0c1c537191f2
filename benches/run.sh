#!/usr/bin/env bash
# The benchmark: what tenant isolation by multitenancy costs, as ratios against a baseline
# measured in the same run.
#
#   benches/run.sh [--tenants N] [--rows N] [--rounds N] [--seconds N] [--clients N] [--only LIST]
#
# Builds the extension in release mode, installs it into PostgreSQL 15, starts a server of its own
# (as postgres, in $MT_BENCH_DIR, default /tmp/multitenancy-bench, port $MT_BENCH_PORT, default
# 5496), loads benches/schema.sql and drives the pgbench scripts in benches/workloads/ as
# bench_app, a NOSUPERUSER NOBYPASSRLS role that owns nothing. A workload's variants (multitenancy,
# the explicit-WHERE baseline, the seed's plpgsql policy) run interleaved: in each round, one
# pgbench run in which every transaction picks a variant's script at random, so all variants see
# the same machine at the same moments. A round's ratio compares the variants' mean latencies;
# the result is the median over the rounds. Absolute TPS depend on the machine; ratios do not.
#
#   --tenants N   tenants (default 1000; try 100000), plus one big tenant with 30 % of the rows
#   --rows N      rows per (ordinary) tenant (default 100)
#   --rounds N    interleaved rounds per workload (default 5)
#   --seconds N   length of one pgbench run (default 6; the first second is warm-up)
#   --clients N   pgbench clients for workloads 1-4 (default 2; workloads 6 and 7 use 16)
#   --only LIST   comma-separated subset of: 1,2,3,3b,4,6,7,enable,ddl,move
#
# ddl (benches/ddl.sh) is a migration's DDL on 150 tenant-enabled tables against the same DDL
# without the extension, in two databases of their own; it does not need the dataset above.
# move (benches/move.sh, also runnable on its own) is mt-move's export and import of a tenant
# with $MT_MOVE_ROWS rows (default 1 000 000) against a plain COPY to and from the same files.
#
# Not part of the test command; Debian 12, as root. Installs what is missing (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

TENANTS=1000 ROWS=100 ROUNDS=5 SECS=6 CLIENTS=2 ONLY="1,2,3,3b,4,6,7,enable,ddl,move"
while [ $# -gt 0 ]; do
    case $1 in
        --tenants) TENANTS=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
# Whether a workload on the dataset of benches/schema.sql is wanted (all but ddl and move).
wants_dataset() { local w; for w in 1 2 3 3b 4 6 7 enable; do wants $w && return 0; done; return 1; }

scripts/setup.sh
. scripts/paths.sh
BIN=$("$PG15_CONFIG" --bindir)
PORT=${MT_BENCH_PORT:-5496}
DIR=${MT_BENCH_DIR:-/tmp/multitenancy-bench}
W=benches/workloads
say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_su() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d bench "$@"; }

say "building multitenancy (release) and installing it into PostgreSQL 15"
cargo pgrx install --release --pg-config "$PG15_CONFIG" 2>&1 | grep -E "^error|Finished" >&2 || true

say "starting PostgreSQL 15 on 127.0.0.1:$PORT (data in $DIR)"
if [ -f "$DIR/data/postmaster.pid" ]; then as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true; fi
rm -rf "$DIR"
mkdir -p "$DIR"
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
as_postgres "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
# jit off: a JIT compile on every simple-protocol execution of the big scans would swamp what
# is measured. synchronous_commit off: the INSERT workload measures the server, not the disk.
# The library preloaded, as README's setup has it: otherwise a session's first statements are
# planned before anything loaded it (a set_config of the context does not), without the
# extension's planner hook.
as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o "-p $PORT -k $DIR \
    -c listen_addresses=127.0.0.1 -c shared_buffers=1GB -c max_connections=64 -c jit=off \
    -c shared_preload_libraries=multitenancy \
    -c synchronous_commit=off -c checkpoint_timeout=30min -c max_wal_size=8GB" start >/dev/null
trap 'as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true' EXIT
"$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE bench"

if wants_dataset; then
    say "loading $TENANTS tenants x $ROWS rows, plus a big tenant with 30 % of the rows"
    read -r TOTAL_ROWS BIG_ROWS < <(psql_su -At -F ' ' -v tenants="$TENANTS" -v rows="$ROWS" -f benches/schema.sql | tail -1)
    say "$TOTAL_ROWS rows per table, $BIG_ROWS of them the big tenant's; loading them into shared buffers"
    psql_su -c "CREATE EXTENSION pg_prewarm" -c "SELECT count(pg_prewarm(c.oid)) FROM pg_class c
        WHERE c.relnamespace::regnamespace::text IN ('public', 'baseline', 'seed') AND c.relkind IN ('r', 'i')" >/dev/null
fi

# The variants of every workload, rendered from one template per workload (workloads/*.sql):
#   multitenancy  public.items, row-level security supplies the tenant
#   baseline      baseline.items, no row-level security, the tenant written out in the query
#   seed          seed.items, the seed's plpgsql policy
TENANT="('00000000-0000-4000-8000-' || :tu::text)::uuid"
render() { # template, variant -> path of the rendered script
    local out items=public.items events=public.events guc=multitenancy.tenant_id
    out="$DIR/scripts/$2.$(basename "$1")"
    local and_tenant="" where_tenant="" tenant_column="" tenant_value=""
    case $2 in
        seed) items=seed.items events=seed.events guc=app.current_tenant_id ;;
        noquota) events=noquota.events ;;
        baseline) items=baseline.items events=baseline.events and_tenant=" AND tenant_id = $TENANT"
                  where_tenant=" WHERE tenant_id = $TENANT" tenant_column="tenant_id, " tenant_value="$TENANT, " ;;
    esac
    mkdir -p "$DIR/scripts"
    sed -e "s~@ITEMS@~$items~g; s~@EVENTS@~$events~g; s~@GUC@~$guc~g; s~@AND_TENANT@~$and_tenant~g" \
        -e "s~@WHERE_TENANT@~$where_tenant~g; s~@TENANT_COLUMN@~$tenant_column~g; s~@TENANT_VALUE@~$tenant_value~g" \
        "$W/$1" >"$out"
    echo "$out"
}
script() { # variant, templates... -> one script: the templates rendered and concatenated
    local variant=$1 out t
    out="$DIR/scripts/$1.$(IFS=+; echo "${*:2}")"; shift
    mkdir -p "$DIR/scripts"
    : >"$out"
    for t in "$@"; do cat "$(render "$t" "$variant")" >>"$out"; done
    echo "$out"
}

# One round of a workload: ONE pgbench run in which every transaction picks one of the variants'
# scripts at random, so all variants share the same seconds of the same machine and noise from
# the machine cancels out. Every transaction's latency is logged (-l); the round's result per
# variant is its mean latency in microseconds.
declare -A LAT
run_round() { # label, protocol, clients, pick, then name=script pairs
    local label=$1 protocol=$2 clients=$3 pick=$4; shift 4
    local args=() names=() pair
    for pair in "$@"; do names+=("${pair%%=*}"); args+=(-f "${pair#*=}"); done
    rm -rf "$DIR/log" && mkdir -p "$DIR/log"
    if ! (cd "$DIR/log" && "$BIN/pgbench" -n -M "$protocol" -h 127.0.0.1 -p "$PORT" -U bench_app \
            -c "$clients" -j $((clients < 2 ? clients : 2)) -T "$SECS" -l --log-prefix=tx \
            -D tenants="$TENANTS" -D rows="$ROWS" -D pick="$pick" -D ready=0 "${args[@]}" bench >"$DIR/pgbench.out" 2>&1); then
        cat "$DIR/pgbench.out" >&2
        return 1
    fi
    local means i
    # Transactions of the first second are left out: every round starts new sessions, whose
    # caches (catalog, plans, tenant_set's registry cache) are cold, unlike an application's.
    cat "$DIR"/log/tx.* >"$DIR/log/all"
    means=$(awk -v warmup=1 'NR == FNR { t = $5 + $6 / 1e6; if (first == "" || t < first) first = t; next }
        $5 + $6 / 1e6 >= first + warmup { n[$4]++; s[$4] += $3 }
        END { for (k in n) print k, s[k] / n[k], n[k] }' "$DIR/log/all" "$DIR/log/all" | sort -n)
    for i in "${!names[@]}"; do
        local mean count
        read -r _ mean count < <(awk -v k="$i" '$1 == k' <<<"$means")
        LAT[$label/${names[$i]}]+=" $mean"
        printf '    %-12s %-12s %10.1f us  (%s transactions)\n' "$label" "${names[$i]}" "$mean" "$count" >&2
    done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# Median over the rounds of a per-round ratio: throughput of $2 relative to $3 = latency $3 / $2.
ratio_of() {
    paste -d' ' <(echo "${LAT[$1/$3]}" | tr ' ' '\n' | grep .) <(echo "${LAT[$1/$2]}" | tr ' ' '\n' | grep .) |
        awk '{print $1 / $2}' | median | awk '{printf "%.3f", $1}'
}
# Transactions per second one client would reach at the variant's median latency, times clients.
tps_of() { echo "${LAT[$1/$2]}" | median | awk -v c="$3" '{printf "%.0f", c * 1e6 / $1}'; }

RESULTS="$DIR/results.md"
: >"$RESULTS"
row() { printf '%s\n' "$*" | tee -a "$RESULTS"; }

run_workload() { # label, protocol, clients, pick, name=script pairs
    local label=$1 round
    say "workload $label: $ROUNDS rounds of ${SECS}s, $3 clients, -M $2"
    for pair in "${@:5}"; do LAT[$label/${pair%%=*}]=""; done
    for ((round = 1; round <= ROUNDS; round++)); do
        [ -n "${RESET_SQL:-}" ] && psql_su -c "$RESET_SQL"
        run_round "$@"
    done
}

# Runs a workload and writes its row of results. Arguments: label, protocol, clients, pick, title,
# then three name=script pairs: the subject, what it is compared with, and the seed.
compare() {
    local label=$1 protocol=$2 clients=$3 pick=$4 title=$5; shift 5
    local a=${1%%=*} b=${2%%=*} c=${3%%=*}
    run_workload "$label" "$protocol" "$clients" "$pick" "$@"
    row "| $title | $(tps_of "$label" "$a" "$clients") | $(tps_of "$label" "$b" "$clients") |" \
        "$(ratio_of "$label" "$a" "$b") | $(tps_of "$label" "$c" "$clients") | $(ratio_of "$label" "$a" "$c") |"
}

declare -A BODY=([1]=point.sql [2]=range.sql [3]=aggregate.sql [3b]=aggregate.sql)
declare -A TITLE=([1]="1 point select by primary key" [2]="2 100 rows ordered by an indexed column"
    [3]="3 aggregate over the tenant's rows" [3b]="3b aggregate, big tenant (30 % of the rows)")

for protocol in prepared simple; do
    header=0
    for w in 1 2 3 3b; do
        wants "$w" || continue
        if [ $header -eq 0 ]; then
            row ""
            row "| workload (-M $protocol) | multitenancy tps | explicit WHERE tps | ratio (target >= 0.97) | seed plpgsql tps | multitenancy / seed |"
            row "|---|---:|---:|---:|---:|---:|"
            header=1
        fi
        pick=0; [ "$w" = 3b ] && pick=1
        compare "$w/$protocol" "$protocol" "$CLIENTS" "$pick" "${TITLE[$w]}" \
            "multitenancy=$(script multitenancy session.sql "${BODY[$w]}")" \
            "baseline=$(script baseline session.sql "${BODY[$w]}")" \
            "seed=$(script seed session.sql "${BODY[$w]}")"
    done
done

if wants 4; then
    # Drivers send a per-transaction tenant as a parameter: set_config(..., true), the function
    # form of SET LOCAL (SET takes no parameters), against tenant_set($1); under -M simple the
    # same statements with the values written in (switch.set_local.sql, a literal SET LOCAL, is
    # there to compare by hand).
    for protocol in prepared simple; do
        set_local=switch.set_config.sql column="set_config(..., true)"
        row ""
        row "| workload 4 (-M $protocol): tenant switched every transaction | tenant_set() tps | $column tps | ratio (target >= 0.95) | seed $column tps | tenant_set / seed |"
        row "|---|---:|---:|---:|---:|---:|"
        for w in 1 2 3; do
            compare "4.$w/$protocol" $protocol "$CLIENTS" 0 "4.${TITLE[$w]}" \
                "tenant_set=$(script multitenancy switch.tenant_set.sql "${BODY[$w]}" commit.sql)" \
                "set_local=$(script multitenancy $set_local "${BODY[$w]}" commit.sql)" \
                "seed=$(script seed $set_local "${BODY[$w]}" commit.sql)"
        done
    done
fi

if wants 6; then
    row ""
    row "| workload (-M prepared) | multitenancy tps | explicit tenant_id tps | ratio (target >= 0.95 without limits, >= 0.90 with) | seed plpgsql tps | multitenancy / seed |"
    row "|---|---:|---:|---:|---:|---:|"
    RESET_SQL="TRUNCATE public.events, baseline.events, seed.events RESTART IDENTITY"  # every round starts empty
    compare 6 prepared 16 2 "6 INSERT, 16 clients over 16 tenants without limits" \
        "multitenancy=$(script multitenancy session.sql insert.sql)" \
        "baseline=$(script baseline session.sql insert.sql)" \
        "seed=$(script seed session.sql insert.sql)"
    compare 6b prepared 16 3 "6b INSERT, 16 clients over 16 tenants with rows and bytes limits" \
        "multitenancy=$(script multitenancy session.sql insert.sql)" \
        "baseline=$(script baseline session.sql insert.sql)" \
        "seed=$(script seed session.sql insert.sql)"
    RESET_SQL=""
fi

if wants 7; then
    # Issue 6: what the exact usage counters and quota checks cost an INSERT (the same
    # tenant-enabled table with and without the counting triggers; no RLS for reference).
    row ""
    row "| workload (-M prepared) | quotas on tps | quotas off tps | ratio (target >= 0.85) | no RLS, no quotas tps | quotas on / no RLS |"
    row "|---|---:|---:|---:|---:|---:|"
    RESET_SQL="TRUNCATE public.events, noquota.events, baseline.events RESTART IDENTITY"
    compare 7 prepared 16 3 "7 INSERT with quotas, 16 clients over 16 tenants with limits" \
        "quotas_on=$(script multitenancy session.sql insert.sql)" \
        "quotas_off=$(script noquota session.sql insert.sql)" \
        "baseline=$(script baseline session.sql insert.sql)"
    RESET_SQL=""
fi

if wants enable; then
    say "tenant_enable on a 1 000 000-row table vs the minimal DDL it implies ($ROUNDS rounds)"
    psql_su <<'SQL'
CREATE SCHEMA scratch;
CREATE TABLE scratch.source AS
SELECT g::bigint AS id, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' AS created_at,
       (g % 100000) / 100.0 AS amount, md5(g::text) AS note
  FROM generate_series(1, 1000000) g;
SQL
    ENABLE_MS="" MINIMAL_MS=""
    tenant="00000000-0000-4000-8000-100000000001"
    for ((round = 0; round < ROUNDS; round++)); do
        for v in enable minimal; do
            psql_su -c "DROP TABLE IF EXISTS scratch.t_$v" \
                -c "CREATE TABLE scratch.t_$v AS TABLE scratch.source" \
                -c "ALTER TABLE scratch.t_$v ADD PRIMARY KEY (id)" -c "VACUUM ANALYZE scratch.t_$v"
        done
        order="enable minimal"; [ $((round % 2)) -eq 1 ] && order="minimal enable"
        for v in $order; do
            if [ "$v" = enable ]; then
                body="PERFORM multitenancy.tenant_enable('scratch.t_enable', '$tenant');"
            else
                # The minimal DDL: the column with its backfill default, NOT NULL, an index.
                body="ALTER TABLE scratch.t_minimal ADD COLUMN tenant_id uuid DEFAULT '$tenant';
                      ALTER TABLE scratch.t_minimal ALTER COLUMN tenant_id SET NOT NULL;
                      CREATE INDEX ON scratch.t_minimal (tenant_id);"
            fi
            ms=$(psql_su -At -c "CREATE TEMP TABLE IF NOT EXISTS timing (ms float8)" -c "
                DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
                    $body
                    INSERT INTO timing VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
                END \$\$" -c "SELECT round(ms::numeric, 1) FROM timing")
            printf '    round %d  %-10s %10s ms\n' $((round + 1)) "$v" "$ms" >&2
            if [ "$v" = enable ]; then ENABLE_MS+=" $ms"; else MINIMAL_MS+=" $ms"; fi
        done
    done
    e=$(echo "$ENABLE_MS" | median) m=$(echo "$MINIMAL_MS" | median)
    row ""
    row "| 1 000 000 rows | tenant_enable ms | minimal DDL ms | ratio (target <= 1.5) |"
    row "|---|---:|---:|---:|"
    row "| tenant_enable with backfill vs ADD COLUMN ... DEFAULT, SET NOT NULL, CREATE INDEX | $e | $m | $(ratio "$e" "$m") |"
fi

if wants ddl; then
    # shellcheck source=benches/ddl.sh
    . benches/ddl.sh
    run_ddl
fi

if wants move; then
    # shellcheck source=benches/move.sh
    . benches/move.sh
    run_move
fi

row ""
if wants_dataset; then
    row "Dataset: $TENANTS tenants x $ROWS rows + a big tenant: $TOTAL_ROWS rows per table, $BIG_ROWS of them the big tenant's."
    row "Each ratio is the median over $ROUNDS rounds; a round is one ${SECS}s pgbench run whose transactions pick a variant at random"
    row "(the first second of each round is warm-up and not counted)."
    row "$CLIENTS clients (workloads 6 and 7: 16). PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), $(nproc) cores."
    row "tps = clients / median latency of the variant: machine-dependent, unlike the ratios."
else
    row "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), $(nproc) cores."
fi
say "results: $RESULTS"
