#!/usr/bin/env bash
# The schema snapshot check of the test command (and how to update the snapshot).
#
#   scripts/schema.sh            check: the SQL the extension generates for the version in
#                                Cargo.toml equals sql/versions/multitenancy--<version>.sql, and
#                                every released version has an upgrade path to it
#   scripts/schema.sh --update   write the generated SQL as that snapshot
#
# sql/versions/ keeps the install script of every version: released ones (listed in
# sql/versions/released) never change; the upgrade test installs them and runs ALTER EXTENSION
# UPDATE through sql/multitenancy--<from>--<to>.sql. The comparison ignores what pgrx varies
# between builds of the same SQL (the order of its blocks, source line comments). The SQL is the
# same for every PostgreSQL major; it is generated for 15.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/paths.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
snapshot=sql/versions/multitenancy--$version.sql
released=$(grep -v '^#' sql/versions/released | xargs)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo pgrx schema pg15 --pg-config "$PG15_CONFIG" --no-default-features --features pg15 -o "$work/generated.sql" \
    >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

if [ "${1:-}" = "--update" ]; then
    for r in $released; do
        if [ "$r" = "$version" ]; then
            echo "version $version is released (sql/versions/released): its snapshot never changes." >&2
            echo "Bump the version in Cargo.toml and write sql/multitenancy--$version--<next>.sql." >&2
            exit 1
        fi
    done
    cp "$work/generated.sql" "$snapshot"
    echo "wrote $snapshot"
    exit 0
fi

# pgrx's blocks sorted, without its source-line comments.
normalize() {
    python3 -c '
import re, sys
blocks = open(sys.argv[1]).read().split("/* <begin connected objects> */")
out = []
for block in blocks:
    block = block.replace("/* </end connected objects> */", "")
    lines = [l.rstrip() for l in block.split("\n") if not re.match(r"^-- \S+\.rs:\d+$", l)]
    text = "\n".join(lines).strip()
    if text:
        out.append(text)
print("\n\n".join(sorted(out)))
' "$1"
}

failed=0
if [ ! -f "$snapshot" ]; then
    echo "schema: no snapshot of version $version ($snapshot)."
    echo "  Write the upgrade script sql/multitenancy--<previous>--$version.sql, then run scripts/schema.sh --update."
    failed=1
else
    normalize "$work/generated.sql" >"$work/generated.norm"
    normalize "$snapshot" >"$work/snapshot.norm"
    if ! diff -u "$work/snapshot.norm" "$work/generated.norm" >"$work/diff"; then
        echo "schema: the extension's SQL is not the SQL of version $version ($snapshot):"
        head -60 "$work/diff"
        is_released=0
        for r in $released; do [ "$r" = "$version" ] && is_released=1; done
        if [ "$is_released" -eq 1 ]; then
            echo "  Version $version is released: its SQL cannot change. Bump the version in Cargo.toml,"
            echo "  write sql/multitenancy--$version--<next>.sql with this change, then run scripts/schema.sh --update."
        else
            echo "  Version $version is not released yet: add this change to its upgrade script"
            echo "  (sql/multitenancy--<previous>--$version.sql; the upgrade test compares the result with a fresh"
            echo "  install), then run scripts/schema.sh --update."
        fi
        failed=1
    fi
fi

# Every released version reaches the current one through upgrade scripts.
for r in $released; do
    [ "$r" = "$version" ] && continue
    reached=" $r "
    frontier="$r"
    while [ -n "$frontier" ]; do
        next=""
        for from in $frontier; do
            for script in sql/multitenancy--"$from"--*.sql; do
                [ -e "$script" ] || continue
                to=${script#sql/multitenancy--"$from"--}
                to=${to%.sql}
                case "$reached" in *" $to "*) ;; *) reached="$reached$to "; next="$next $to" ;; esac
            done
        done
        frontier=$next
    done
    case "$reached" in
        *" $version "*) echo "schema: $r upgrades to $version" ;;
        *) echo "schema: no upgrade path from released $r to $version (sql/multitenancy--$r--...sql)"; failed=1 ;;
    esac
    if [ ! -f "sql/versions/multitenancy--$r.sql" ]; then
        echo "schema: the install script of released $r is missing (sql/versions/multitenancy--$r.sql)"
        failed=1
    fi
done

if [ "$failed" -eq 0 ]; then
    echo "schema: version $version matches $snapshot"
    echo "test result: ok. 1 passed; 0 failed; 0 ignored"
else
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored"
fi
exit "$failed"
