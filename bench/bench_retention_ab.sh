#!/usr/bin/env bash
# Retention of one day while reports arrive, before (BASE_TREE, e.g. main at 2938fe6) and after
# (this tree), each on a fresh copy of the same filled database, alternating, ROUNDS rounds.
#   BASE_TREE=/tmp/retention/base SOURCE_DB=homepot_retention_base ROUNDS=3 OUT=/tmp/retention/ab \
#       bench/bench_retention_ab.sh
# SOURCE_DB: filled once by the before code, e.g.
#   (cd $BASE_TREE && python bench/bench_history_soak.py --database homepot_retention_base \
#       --devices 100000 --rows-per-device-day 20 --days 3 --fill-only --skip-write-cost)
# Each side's copy is made with CREATE DATABASE ... TEMPLATE (STRATEGY FILE_COPY); the after
# side's copy is migrated by this tree first (migration 0021, timed). Copies are dropped after.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BASE_TREE=${BASE_TREE:?}
SOURCE_DB=${SOURCE_DB:?}
ROUNDS=${ROUNDS:-3}
INGEST_THREADS=${INGEST_THREADS:-2}  # threads sending single health reports throughout
OUT=${OUT:-/tmp/retention_ab}
PY=${PY:-$HERE/.venv/bin/python}
PSQL="psql -h ${PGHOST:-127.0.0.1} -U ${PGUSER:-postgres} -X -q -At"
mkdir -p "$OUT"

copy() {  # copy NAME
    $PSQL -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)"
    $PSQL -c "CREATE DATABASE \"$1\" TEMPLATE \"$SOURCE_DB\" STRATEGY FILE_COPY"
    # A new database starts with no statistics: without this the retention's row count
    # (the statistics' live rows) would ANALYZE the day inside the measured step, on both sides.
    $PSQL -d "$1" -c "ANALYZE monitoring_app_healthcheck" -c "ANALYZE monitoring_app_devicestatuschange"
}

side() {  # side before|after ROUND
    local name=$1 round=$2 db="${SOURCE_DB}_$1" tree
    copy "$db"
    if [ "$name" = after ]; then
        tree=$HERE
        local start end
        start=$(date +%s.%N)
        (cd "$tree" && DATABASE_URL="postgres://${PGUSER:-postgres}@${PGHOST:-127.0.0.1}:5432/$db" \
            HOMEPOT_ENV_FILE= DEBUG=true "$PY" manage.py migrate monitoring_app --noinput) \
            > "$OUT/migrate_$round.log" 2>&1
        end=$(date +%s.%N)
        echo "round $round: migration took $(echo "$end - $start" | bc) s" | tee -a "$OUT/migrate_$round.log"
    else
        tree=$BASE_TREE
    fi
    echo "round $round $name: $(uptime)" | tee -a "$OUT/load.log"
    (cd "$tree" && "$PY" bench/bench_history_soak.py --database "$db" --reuse --no-fill --days 3 \
        --size-rounds 0 --skip-write-cost --delete-budget 5 --ingest-threads "${INGEST_THREADS:-2}" --keep \
        --json "$OUT/${name}_$round.json") \
        > "$OUT/${name}_$round.log" 2>&1
    echo "round $round $name done: $(uptime)" | tee -a "$OUT/load.log"
    $PSQL -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
        side before "$round"; side after "$round"
    else
        side after "$round"; side before "$round"
    fi
done
