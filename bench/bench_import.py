"""Benchmark `manage.py import_homepot` on an older HOMEPOT database of chain size.

    python bench/bench_import.py                                   # 100,000 devices, 1,000,000 checks
    python bench/bench_import.py --health-checks 10000000          # the issue's full size
    python bench/bench_import.py --json result.json --keep

What it does:
  1. creates a scratch older-style database `homepot_legacy_bench_<uuid>` (the schema of
     legacy_app/tests/legacy_db.py) and fills it with generate_series: `--sites` sites,
     `--devices` devices spread over them (unique MACs), `--users` users with one real bcrypt
     hash, `--jobs` jobs, `--health-checks` health checks round-robin over the devices, 5
     minutes apart, and `--audit-logs` audit rows; ANALYZE;
  2. drops and recreates the target database (`--database`, default homepot_bench_import;
     DROPPED) and migrates it;
  3. runs `manage.py import_homepot --from <url> --no-progress` as a separate process, as an
     operator would, and records its wall time; then runs it again (nothing new: the cost of
     the idempotent re-run);
  4. drops the older database (unless --keep).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from legacy_app.tests.legacy_db import SERVER, scratch_database  # noqa: E402

FILL = """
INSERT INTO sites (site_id, name, description, location, created_at)
SELECT 'site-' || lpad(g::text, 5, '0'), 'Store ' || g, 'Store number ' || g, g || ' Main Street',
       now() - interval '900 days'
FROM generate_series(1, %(sites)s) g;

INSERT INTO devices (device_id, name, device_type, site_id, ip_address, mac_address, status,
                     firmware_version, last_seen, config, created_at)
SELECT 'pos-terminal-' || lpad(g::text, 7, '0'), 'POS Terminal ' || g,
       (ARRAY['pos_terminal','pos_terminal','pos_terminal','card_reader','receipt_printer'])[1 + g %% 5],
       1 + g %% %(sites)s, '10.' || (g >> 16) %% 256 || '.' || (g >> 8) %% 256 || '.' || g %% 256,
       '02:FD:' || lpad(to_hex((g >> 24) & 255), 2, '0') || ':' || lpad(to_hex((g >> 16) & 255), 2, '0')
         || ':' || lpad(to_hex((g >> 8) & 255), 2, '0') || ':' || lpad(to_hex(g & 255), 2, '0'),
       (ARRAY['online','online','online','offline','maintenance'])[1 + g %% 5], '4.2.1',
       now() - (g %% 600) * interval '1 second',
       json_build_object('gateway_url', 'https://payments.example.com'),
       now() - interval '800 days'
FROM generate_series(1, %(devices)s) g;

INSERT INTO users (username, email, hashed_password, is_admin, is_active)
SELECT 'user' || g, 'user' || g || '@example.com', %(hash)s, g <= 3, true
FROM generate_series(1, %(users)s) g;

INSERT INTO jobs (job_id, action, description, site_id, payload, priority, status, created_at,
                  started_at, completed_at)
SELECT 'job-' || g, (ARRAY['update_pos_payment_config','restart_pos_app','update_config'])[1 + g %% 3],
       'Job ' || g, 1 + g %% %(sites)s, '{"v": 1}', 'normal',
       (ARRAY['completed','completed','failed','sent'])[1 + g %% 4],
       now() - g * interval '1 hour', now() - g * interval '1 hour',
       now() - g * interval '1 hour' + interval '5 minutes'
FROM generate_series(1, %(jobs)s) g;

INSERT INTO health_checks (device_id, is_healthy, response_time_ms, status_code, endpoint, response_data,
                           error_message, timestamp)
SELECT 1 + g %% %(devices)s, g %% 17 <> 0, 20 + g %% 180, 200, '/health',
       json_build_object('cpu', g %% 100, 'mem', g %% 64), NULL,
       now() - (g / %(devices)s) * interval '5 minutes'
FROM generate_series(1, %(checks)s) g;

INSERT INTO audit_logs (event_type, description, user_id, site_id, device_id, new_values, ip_address,
                        created_at)
SELECT 'device_updated', 'Device ' || g || ' updated', 1 + g %% %(users)s, 1 + g %% %(sites)s,
       1 + g %% %(devices)s, json_build_object('status', 'online'), '10.1.2.3',
       now() - g * interval '1 minute'
FROM generate_series(1, %(audits)s) g;

ANALYZE;
"""


def _run(cmd: list[str], env: dict) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 (our own manage.py)
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=2_000)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--health-checks", type=int, default=1_000_000)
    parser.add_argument("--audit-logs", type=int, default=100_000)
    parser.add_argument("--database", default="homepot_bench_import", help="Target database (DROPPED).")
    parser.add_argument("--keep", action="store_true", help="Keep the older database.")
    parser.add_argument("--json", help="Write the figures here too.")
    args = parser.parse_args()

    result: dict = {"sizes": {k: getattr(args, k) for k in ("sites", "devices", "users", "jobs")}}
    result["sizes"] |= {"health_checks": args.health_checks, "audit_logs": args.audit_logs}
    hash_ = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(12)).decode()
    with scratch_database("homepot_legacy_bench") as legacy_url:
        started = time.monotonic()
        with psycopg.connect(legacy_url, autocommit=True) as conn:
            params = {
                "sites": args.sites,
                "devices": args.devices,
                "users": args.users,
                "jobs": args.jobs,
                "checks": args.health_checks,
                "audits": args.audit_logs,
                "hash": hash_,
            }
            for statement in FILL.split(";\n\n"):
                conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
        result["build_seconds"] = round(time.monotonic() - started, 1)
        print(f"older database built in {result['build_seconds']} s: {legacy_url}", flush=True)

        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{args.database}"')
        env = dict(os.environ, DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}")
        env.setdefault("SECRET_KEY", "bench-only")
        python = str(ROOT / ".venv" / "bin" / "python")
        _run([python, "manage.py", "migrate", "-v0"], env)
        cmd = [python, "manage.py", "import_homepot", "--from", legacy_url, "--no-progress"]
        for label in ("first_run", "second_run"):
            elapsed, out = _run(cmd, env)
            result[f"{label}_seconds"] = round(elapsed, 1)
            print(f"{label}: {elapsed:.1f} s\n{out}", flush=True)
        if args.keep:
            print(f"kept: {legacy_url}")
            input("Press Enter to drop the older database...")
    rate = args.health_checks / result["first_run_seconds"]
    result["health_checks_per_second_overall"] = round(rate)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
