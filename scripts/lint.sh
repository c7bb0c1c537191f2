#!/usr/bin/env bash
# The lint tier of the test command: formatting, clippy for every supported PostgreSQL major
# (the extension with its pg_test code, and the integration crate), and the one-error-catalogue
# rule (no RAISE in the extension's SQL: errors are raised through multitenancy._raise, so that
# every SQLSTATE, message and hint comes from src/error.rs). Prints one line per check and a
# closing 'N passed, N failed' line; exits non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/paths.sh
passed=0 failed=0
check() { # name, command...
    local name=$1; shift
    local out
    if out=$("$@" 2>&1); then
        printf 'lint %-48s ok\n' "$name"; passed=$((passed + 1))
    else
        printf 'lint %-48s FAILED\n%s\n' "$name" "$out" | head -60; failed=$((failed + 1))
    fi
}
no_raise_in_sql() {
    if grep -n "RAISE" sql/*.sql; then
        echo "raise errors through multitenancy._raise('<kind>', ARRAY[...]) with a variant in src/error.rs"
        return 1
    fi
}
check "cargo fmt --check" cargo fmt --all -- --check
for major in $PG_MAJORS_SUPPORTED; do
    check "clippy -D warnings (extension, pg$major)" \
        cargo clippy --quiet --no-default-features --features "pg$major pg_test" -- -D warnings
done
check "clippy -D warnings (integration tests)" cargo clippy --quiet -p multitenancy-integration --tests -- -D warnings
check "clippy -D warnings (mt-move)" cargo clippy --quiet -p multitenancy-move --all-targets -- -D warnings
check "no RAISE outside multitenancy._raise" no_raise_in_sql
echo "lint: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
