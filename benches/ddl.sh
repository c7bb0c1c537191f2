# shellcheck shell=bash
# The DDL workload (issue 17), sourced by benches/run.sh (`--only ddl`): what the extension costs
# a migration's DDL on tenant-enabled tables, as a ratio against the same DDL without it.
#
# Two databases on the benchmark server, each with the same 150 tables of an e-commerce schema
# (15 entities x 10 shops: customers_1 ... coupons_10), owned by the migration role ddl_owner:
#   multitenancy  the tables created and tenant-enabled in one transaction (timed: "tenant_enable
#                 of 150 tables"), so tenant_id and UNIQUE (tenant_id, id) (which is the tenant
#                 index) come from tenant_enable, with row-level security
#   plain         no extension; the same column and unique key added by hand in the same kind
#                 of transaction (timed too, for reference), no row-level security
# Every table: id identity primary key, name, status, amount, created_at, two bigint columns
# that can reference other tables (orders_3.customer_id -> customers_3), tenant_id; a non-unique
# index on created_at and one on the first reference; 200 rows of each of two tenants that
# share names (so a unique name exists per tenant only) and reference their own tenant's rows.
#
# The measured script, run by the migration role with no tenant context, one transaction per
# statement (psql autocommit, as migration tools often run DDL):
#   60 DROP INDEX          (of created_at indexes)
#   60 CREATE UNIQUE INDEX multitenancy: ON t (name), which the extension makes (tenant_id, name);
#                          plain: ON t (tenant_id, name)
#   20 ADD FOREIGN KEY     multitenancy: (x_id) REFERENCES parent (id), which the extension makes
#                          (tenant_id, x_id) REFERENCES parent (tenant_id, id);
#                          plain: (tenant_id, x_id) REFERENCES parent (tenant_id, id)
# The baseline is the DDL an application would write if it kept tenant_id by hand: the same
# statements with tenant_id spelled out (without it, the unique index would fail on the names
# both tenants share), so the ratio is the cost of the extension's hooks and guard, not of a
# wider key. The multitenancy database has session_preload_libraries = 'multitenancy' (the
# README's setup for a migration role: the rewrite needs the library loaded before the first
# statement); the plain one never loads the library.
#
# Rounds: each round copies both databases afresh from their templates (CREATE DATABASE ...
# TEMPLATE, then CHECKPOINT, untimed) and runs the script on both, in alternating order. Every
# statement is timed by psql (\timing); a round's ratio is total multitenancy / total plain;
# the result is the median over the rounds, per statement kind and in all.
#
# Uses from run.sh: BIN, PORT, DIR, ROUNDS, say, row, median, ratio.

DDL_ROWS=200 # rows of each of the two tenants, per table
DDL_TENANT_A=00000000-0000-4000-8000-d00000000001
DDL_TENANT_B=00000000-0000-4000-8000-d00000000002
# entity  first reference:parent  second reference:parent
DDL_ENTITIES=(
    "customers referrer:customers segment:categories"
    "categories parent:categories supplier:suppliers"
    "suppliers category:categories contact:customers"
    "products category:categories supplier:suppliers"
    "addresses customer:customers supplier:suppliers"
    "carts customer:customers address:addresses"
    "cart_items cart:carts product:products"
    "orders customer:customers address:addresses"
    "order_items order:orders product:products"
    "payments order:orders customer:customers"
    "shipments order:orders address:addresses"
    "invoices order:orders payment:payments"
    "refunds payment:payments order:orders"
    "reviews product:products customer:customers"
    "coupons customer:customers order:orders"
)
DDL_SHOPS=10

ddl_psql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" "$@"; }

# Every table, one line each: number (1..150), table, reference 1 column, its parent table,
# reference 2 column, its parent table.
ddl_tables() {
    local shop e n=0 entity r1 r2
    for ((shop = 1; shop <= DDL_SHOPS; shop++)); do
        for e in "${DDL_ENTITIES[@]}"; do
            read -r entity r1 r2 <<<"$e"
            n=$((n + 1))
            echo "$n ${entity}_$shop ${r1%%:*}_id ${r1#*:}_$shop ${r2%%:*}_id ${r2#*:}_$shop"
        done
    done
}

# The setup of one database (variant multitenancy or plain), run by the superuser in it.
ddl_setup_sql() {
    local variant=$1 t c1 c2
    printf '%s\n' '\set ON_ERROR_STOP 1'
    echo "SET client_min_messages = warning;"
    if [ "$variant" = multitenancy ]; then
        echo "CREATE EXTENSION multitenancy;"
        echo "GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) TO ddl_owner;"
        echo "INSERT INTO multitenancy.tenants (id, name, slug) VALUES"
        echo "    ('$DDL_TENANT_A', 'Shop A', 'shop-a'), ('$DDL_TENANT_B', 'Shop B', 'shop-b');"
    fi
    echo "GRANT CREATE ON SCHEMA public TO ddl_owner;"
    echo "SET ROLE ddl_owner;"
    echo "BEGIN;"
    while read -r _ t c1 _ c2 _; do
        echo "CREATE TABLE $t (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL,"
        echo "    status text NOT NULL, amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
        echo "    $c1 bigint, $c2 bigint);"
        echo "CREATE INDEX ${t}_created_at_idx ON $t (created_at);"
        echo "CREATE INDEX ${t}_${c1}_idx ON $t ($c1);"
    done < <(ddl_tables)
    # What is timed: tenant_enable of every table, or what it adds by hand, COMMIT included.
    echo "SELECT clock_timestamp() AS t0 \\gset"
    printf '%s\n' '\o /dev/null'
    while read -r _ t c1 _ c2 _; do
        if [ "$variant" = multitenancy ]; then
            echo "SELECT multitenancy.tenant_enable('$t');"
        else
            echo "ALTER TABLE $t ADD COLUMN tenant_id uuid NOT NULL;"
            echo "ALTER TABLE $t ADD UNIQUE (tenant_id, id);"
        fi
    done < <(ddl_tables)
    printf '%s\n' '\o'
    echo "COMMIT;"
    echo "SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) AS setup_s \\gset"
    echo "RESET ROLE;"
    # The rows, as the superuser (whom row-level security does not filter): tenant A has ids
    # 1..rows, tenant B rows+1..2*rows, the same names, references to their own tenant's ids.
    while read -r _ t c1 _ c2 _; do
        echo "INSERT INTO $t (id, tenant_id, name, status, amount, created_at, $c1, $c2)"
        echo "SELECT g, CASE WHEN g <= $DDL_ROWS THEN '$DDL_TENANT_A'::uuid ELSE '$DDL_TENANT_B'::uuid END,"
        echo "       '${t%_*} ' || ((g - 1) % $DDL_ROWS + 1), (ARRAY['new', 'paid', 'shipped'])[g % 3 + 1], (g % 1000) / 10.0,"
        echo "       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',"
        echo "       ((g - 1) % $DDL_ROWS * 7) % $DDL_ROWS + 1 + (g - 1) / $DDL_ROWS * $DDL_ROWS,"
        echo "       ((g - 1) % $DDL_ROWS * 13) % $DDL_ROWS + 1 + (g - 1) / $DDL_ROWS * $DDL_ROWS"
        echo "  FROM generate_series(1, 2 * $DDL_ROWS) g;"
    done < <(ddl_tables)
    echo "VACUUM ANALYZE;"
    printf '%s\n' '\echo :setup_s'
}

# The measured script of a variant: 60 DROP INDEX, 60 CREATE UNIQUE INDEX, 20 ADD FOREIGN KEY,
# in that order (ddl_kind maps a statement's position to its kind).
ddl_script() {
    local variant=$1 n t c1 p1 tenant=""
    [ "$variant" = plain ] && tenant="tenant_id, "
    printf '%s\n' '\set ON_ERROR_STOP 1'
    printf '%s\n' '\timing on'
    while read -r n t _; do
        [ $((n % 5)) -lt 2 ] && echo "DROP INDEX ${t}_created_at_idx;"
    done < <(ddl_tables)
    while read -r n t _; do
        case $((n % 5)) in 2 | 3) echo "CREATE UNIQUE INDEX ${t}_name_key ON $t (${tenant}name);" ;; esac
    done < <(ddl_tables)
    # Twenty references, spread over entities and shops: table k (k = 0..19) is entity k mod 15
    # of shop k mod 10 + 1, referencing the parent of its first reference in the same shop.
    local k all
    mapfile -t all < <(ddl_tables)
    for ((k = 0; k < 20; k++)); do
        read -r n t c1 p1 _ <<<"${all[$(((k % DDL_SHOPS) * ${#DDL_ENTITIES[@]} + k % ${#DDL_ENTITIES[@]}))]}"
        if [ "$variant" = plain ]; then
            echo "ALTER TABLE $t ADD FOREIGN KEY (tenant_id, $c1) REFERENCES $p1 (tenant_id, id);"
        else
            echo "ALTER TABLE $t ADD FOREIGN KEY ($c1) REFERENCES $p1 (id);"
        fi
    done
}
DDL_KINDS=("60 DROP INDEX (non-unique)" "60 CREATE UNIQUE INDEX ON t (name) / (tenant_id, name)"
    "20 ADD FOREIGN KEY (x_id) / (tenant_id, x_id)")
# psql's \timing lines on stdin -> milliseconds per kind and in all: "drop unique fk total".
ddl_times() {
    awk '/^Time: / { n++; k = (n <= 60 ? 1 : n <= 120 ? 2 : 3); ms[k] += $2; all += $2 }
         END { if (n != 140) { print "expected 140 timed statements, got " n > "/dev/stderr"; exit 1 }
               printf "%.1f %.1f %.1f %.1f\n", ms[1], ms[2], ms[3], all }'
}

run_ddl() {
    local v
    say "DDL: 150 tables in two databases (with multitenancy, and plain), $DDL_ROWS rows x 2 tenants each"
    mkdir -p "$DIR/ddl"
    ddl_psql -U postgres -d postgres -c "CREATE ROLE ddl_owner LOGIN"
    declare -A setup_s
    for v in multitenancy plain; do
        ddl_setup_sql $v >"$DIR/ddl/setup.$v.sql"
        ddl_script $v >"$DIR/ddl/script.$v.sql"
        ddl_psql -U postgres -d postgres -c "CREATE DATABASE ddl_${v}_template"
        setup_s[$v]=$(ddl_psql -U postgres -d "ddl_${v}_template" -f "$DIR/ddl/setup.$v.sql" | tail -1)
    done
    printf '    tenant_enable of 150 tables: %.2f s (by hand without the extension: %.2f s)\n' \
        "${setup_s[multitenancy]}" "${setup_s[plain]}" >&2

    say "DDL: $ROUNDS rounds of 60 DROP INDEX + 60 CREATE UNIQUE INDEX + 20 ADD FOREIGN KEY on each database"
    declare -A ms
    local round order times i a b total_ratios="" kind_ratios=("" "" "")
    for ((round = 1; round <= ROUNDS; round++)); do
        for v in multitenancy plain; do
            ddl_psql -U postgres -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS ddl_$v" \
                -c "CREATE DATABASE ddl_$v TEMPLATE ddl_${v}_template"
        done
        ddl_psql -U postgres -d postgres -c "ALTER DATABASE ddl_multitenancy SET session_preload_libraries = 'multitenancy'" \
            -c "CHECKPOINT"
        order="multitenancy plain"; [ $((round % 2)) -eq 0 ] && order="plain multitenancy"
        for v in $order; do
            times=$(ddl_psql -U ddl_owner -d "ddl_$v" -f "$DIR/ddl/script.$v.sql" | ddl_times)
            ms[$round/$v]=$times
            # shellcheck disable=SC2086 # the four numbers, one per %s
            printf '    round %d  %-12s  DROP INDEX %7.1f ms  CREATE UNIQUE INDEX %7.1f ms  ADD FOREIGN KEY %7.1f ms  all %7.1f ms\n' \
                "$round" "$v" $times >&2
        done
        if [ "$round" -eq 1 ]; then ddl_check; fi
        read -r -a a <<<"${ms[$round/multitenancy]}"
        read -r -a b <<<"${ms[$round/plain]}"
        for i in 0 1 2; do kind_ratios[i]+=" $(ratio "${a[i]}" "${b[i]}")"; done
        total_ratios+=" $(ratio "${a[3]}" "${b[3]}")"
    done

    local col
    ddl_median_ms() { # variant, column -> median over the rounds of that column
        for ((round = 1; round <= ROUNDS; round++)); do
            read -r -a a <<<"${ms[$round/$1]}"
            echo "${a[$2]}"
        done | median | awk '{printf "%.1f", $1}'
    }
    row ""
    row "| DDL on 150 enabled tables, one transaction per statement | multitenancy ms | without the extension ms | ratio (target <= 1.5) | ms per statement (multitenancy / without) |"
    row "|---|---:|---:|---:|---:|"
    for col in 0 1 2 3; do
        local title count m p r
        if [ $col -eq 3 ]; then
            title="all 140 statements" count=140 r=$(echo "$total_ratios" | median)
        else
            title=${DDL_KINDS[col]} count=${title%% *} r=$(echo "${kind_ratios[col]}" | median)
        fi
        m=$(ddl_median_ms multitenancy $col) p=$(ddl_median_ms plain $col)
        r=$(awk -v r="$r" 'BEGIN {printf "%.3f", r}')
        [ $col -eq 3 ] && r="**$r**"
        row "| $title | $m | $p | $r | $(awk -v m="$m" -v p="$p" -v n="$count" 'BEGIN {printf "%.2f / %.2f", m / n, p / n}') |"
    done
    row ""
    row "tenant_enable of 150 tables: $(printf '%.2f' "${setup_s[multitenancy]}") s (one transaction, COMMIT included;" \
        "adding the same column and unique key by hand without the extension: $(printf '%.2f' "${setup_s[plain]}") s)."
    row "DDL: median over $ROUNDS rounds; a round runs the script on fresh copies of both databases, in alternating order."
}

# After the first round: the extension made the keys per tenant and the foreign keys composite,
# and both databases ended with the same indexes and constraints.
ddl_check() {
    local v shape=()
    for v in multitenancy plain; do
        shape+=("$(ddl_psql -U postgres -d "ddl_$v" -At -F ' ' -c "
            SELECT count(*) FILTER (WHERE i.indisunique AND pg_get_indexdef(i.indexrelid) LIKE '%(tenant_id, name)'),
                   count(*) FILTER (WHERE NOT i.indisunique), count(*)
              FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'" -c "
            SELECT count(*) FILTER (WHERE pg_get_constraintdef(oid) LIKE 'FOREIGN KEY (tenant_id, %) REFERENCES %(tenant_id, id)'),
                   count(*)
              FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace" | tr '\n' ' ')")
    done
    if [ "${shape[0]}" != "60 240 600 20 20 " ] || [ "${shape[1]}" != "${shape[0]}" ]; then
        echo "DDL: unexpected result (unique (tenant_id, name), non-unique, all indexes; composite, all foreign keys):" \
            "multitenancy ${shape[0]}, plain ${shape[1]}" >&2
        return 1
    fi
}
