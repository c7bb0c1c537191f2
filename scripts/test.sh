#!/usr/bin/env bash
# The test command: every tier, against real PostgreSQL servers, on Debian 12 as root.
#
#   0. lint: cargo fmt --check, clippy -D warnings for every supported major, the one-error-
#      catalogue rule (scripts/lint.sh)
#   1. pg_test (unit tests inside PostgreSQL) on every supported major (14-18) — cargo pgrx test
#   2. integration suites (pgrx-tests/) on every supported major: a server started by the tests,
#      driven by a Postgres client as real roles (non-superuser NOBYPASSRLS app role, owner, DBA);
#      the upgrade suite updates every released version (sql/versions/) to this one there
#   3. Citus: on the majors Citus supports (16-18), Citus is built from the vendored source once
#      per machine (scripts/citus.sh) and pgrx-tests/tests/citus.rs starts a coordinator and two
#      workers and runs its (otherwise ignored) suite there
#   4. schema snapshot: the generated SQL is the committed SQL of this version, and every
#      released version has an upgrade path to it (scripts/schema.sh)
#
# Installs whatever is missing first (scripts/setup.sh). Ends with each tier's totals.
# MT_TEST_PG="15" (or "15 17", ...; default: all of 14 15 16 17 18) picks the PostgreSQL majors.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1

. scripts/paths.sh
PG_MAJORS=${MT_TEST_PG:-$PG_MAJORS_SUPPORTED}
declare -A PG_CONFIG=([14]=$PG14_CONFIG [15]=$PG15_CONFIG [16]=$PG16_CONFIG [17]=$PG17_CONFIG [18]=$PG18_CONFIG)
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

if [ "$(id -u)" -eq 0 ]; then
    # initdb refuses root: pgrx's test server runs as postgres, in a directory it owns.
    export CARGO_PGRX_TEST_RUNAS=postgres
    export CARGO_PGRX_TEST_PGDATA=${CARGO_PGRX_TEST_PGDATA:-/tmp/multitenancy-pgrx-test-pgdata}
    rm -rf "$CARGO_PGRX_TEST_PGDATA"
    mkdir -p "$CARGO_PGRX_TEST_PGDATA"
    chown postgres: "$CARGO_PGRX_TEST_PGDATA"
fi

TIERS=()
run_tier() { # name, command...
    local name=$1; shift
    printf '\n\033[1;34m==> %s\033[0m\n' "$name"
    "$@" 2>&1 | tee "$LOGS/${#TIERS[@]}.log"
    local status=${PIPESTATUS[0]}
    TIERS+=("$name|$status")
}

run_tier "lint" scripts/lint.sh
for major in $PG_MAJORS; do
    run_tier "pg_test, PostgreSQL $major" cargo pgrx test "pg$major"
done
for major in $PG_MAJORS; do
    run_tier "integration, PostgreSQL $major" bash -c "
        cargo pgrx install --pg-config '${PG_CONFIG[$major]}' >/dev/null &&
        MT_PG_CONFIG='${PG_CONFIG[$major]}' cargo test -p multitenancy-integration --no-fail-fast"
done
for major in $PG_MAJORS; do
    case " $CITUS_MAJORS " in *" $major "*) ;; *) continue ;; esac
    run_tier "Citus cluster, PostgreSQL $major" bash -c "
        scripts/citus.sh '${PG_CONFIG[$major]}' &&
        cargo pgrx install --pg-config '${PG_CONFIG[$major]}' >/dev/null &&
        MT_PG_CONFIG='${PG_CONFIG[$major]}' cargo test -p multitenancy-integration --test citus -- --ignored --test-threads=1"
done
run_tier "schema snapshot" scripts/schema.sh

printf '\n\033[1m%-34s %8s %8s %8s  %s\033[0m\n' "tier" "passed" "failed" "ignored" "result"
failed_any=0
for i in "${!TIERS[@]}"; do
    name=${TIERS[$i]%|*}; status=${TIERS[$i]##*|}
    read -r passed failed ignored < <(grep -aE '^(test result:|lint: )' "$LOGS/$i.log" |
        sed -E 's/.* ([0-9]+) passed[;,] ([0-9]+) failed(; ([0-9]+) ignored)?.*/\1 \2 \4/' |
        awk '{p+=$1; f+=$2; g+=$3} END {print p+0, f+0, g+0}')
    result=ok
    if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then result=FAILED; failed_any=1; fi
    printf '%-34s %8s %8s %8s  %s\n' "$name" "$passed" "$failed" "$ignored" "$result"
done
exit $failed_any
