"""Whether two checkouts serve the console's pages byte for byte alike (issue 11, console3).

    python bench/console_html_diff.py --database homepot_reads_1m --before /tmp/base --after .
    python bench/console_html_diff.py --database homepot_reads_1m --before /tmp/base --after . \\
        --user bench-manager

Serves each page through Django's test client from each checkout (a separate process each,
the clock frozen at --now so the charts and "as of" agree), blanks what changes per request
anyway (the CSRF token, "N minutes ago"), and prints "same" or the first differing lines per
page. Exit status 1 when a page differs. Nothing is written to the database but a session.
"""

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PAGES = {
    "changelist": "/admin/devices_app/device/",
    "changelist_filtered": "/admin/devices_app/device/?status__exact=offline&o=2",
    "fleet_dashboard": "/admin/monitoring_app/alert/fleet/",
    "landing": "/admin/",
    "glance": "/admin/glance/",
    "sites": "/admin/sites_app/site/",
    "jobs": "/admin/jobs_app/job/",
    "alerts": "/admin/monitoring_app/alert/",
    "audit": "/admin/monitoring_app/auditlog/",
}

DUMP = """
import datetime, os, re, sys
sys.path.insert(0, os.getcwd())
import django
django.setup()
from django.test import Client
from django.utils import timezone
from accounts.models import User
frozen = datetime.datetime.fromisoformat(os.environ["DIFF_NOW"])
timezone.now = lambda: frozen
client = Client()
client.force_login(User.objects.get(username=os.environ["DIFF_USER"]))
for name, path in %r.items():
    html = client.get(path).content.decode()
    html = re.sub(r"\\d+\\xa0(minute|hour|second|day)s? ago", "N ago", html)
    html = re.sub(r'csrfmiddlewaretoken" value="[^"]+"', "csrf", html)
    with open(os.path.join(os.environ["DIFF_OUT"], name + ".html"), "w") as out:
        out.write(html)
"""


def dump(root: Path, out: Path, args) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"),
        "HOMEPOT_ENV_FILE": "",
        "DJANGO_SETTINGS_MODULE": "homepot.settings",
        "DIFF_NOW": args.now,
        "DIFF_USER": args.user,
        "DIFF_OUT": str(out),
    }
    subprocess.run([sys.executable, "-c", DUMP % PAGES], cwd=root, env=env, check=True)  # noqa: S603 (our own script)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--user", default="bench-admin")
    parser.add_argument("--now", default="2026-12-05T04:20:00+00:00", help="The frozen clock (ISO 8601).")
    args = parser.parse_args()
    differ = 0
    with tempfile.TemporaryDirectory() as before, tempfile.TemporaryDirectory() as after:
        dump(args.before.resolve(), Path(before), args)
        dump(args.after.resolve(), Path(after), args)
        for name in PAGES:
            old = (Path(before) / f"{name}.html").read_text().splitlines()
            new = (Path(after) / f"{name}.html").read_text().splitlines()
            if old == new:
                print(f"{name:20} same ({sum(map(len, new)):,} characters)")
                continue
            differ = 1
            print(f"{name:20} DIFFERS")
            print("\n".join(list(difflib.unified_diff(old, new, lineterm="", n=0))[:12]))
    return differ


if __name__ == "__main__":
    sys.exit(main())
