#!/usr/bin/env bash
# The whole HOMEPOT test suite, on PostgreSQL (the production engine), in one command.
#
#   ./scripts/test.sh                      everything
#   ./scripts/test.sh -k devices -x        any pytest arguments pass through
#   ./scripts/test.sh -m browser           the browser tests only (-m "not browser": all but them)
#   DATABASE_URL=postgres://u:p@host:5432/homepot ./scripts/test.sh
#
# Creates or updates .venv like scripts/run.sh, makes sure PostgreSQL and Redis answer (starting
# local ones that are down), that the browser tests have a Chromium (apt-get installs a
# missing one; HOMEPOT_SKIP_BROWSER_TESTS=1 skips them where there is no apt, never in CI) and
# that the rule tests have Prometheus' promtool (apt-get install prometheus), then runs pytest.
# The test database is test_<name in DATABASE_URL> (default: test_homepot on 127.0.0.1:5432 as
# user postgres); it is kept between runs for speed (--reuse-db), and rebuilt when CI=true or
# when you pass --create-db.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

case "${1:-}" in
-h | --help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

export DATABASE_URL="${DATABASE_URL:-${DATABASE__URL:-postgres://postgres@127.0.0.1:5432/homepot}}"

setup_venv
ensure_postgres
ensure_redis
# Not fatal here: without a Chromium the browser tests fail, and every other test still runs.
ensure_chromium || note "continuing without Chromium: the browser tests will fail"
ensure_promtool || note "continuing without promtool: the Prometheus rule tests will fail"
ensure_multihost_tools || note "continuing: the multi-host test will fail"

if [ "${CI:-}" = "true" ]; then
    # A stale test database reused from an earlier run could hide a broken migration.
    set -- --create-db "$@"
fi

step "Running the tests on $(url_host_port "$DATABASE_URL" 5432 | tr ' ' ':')"
exec "$VENV_PY" -m pytest "$@"
