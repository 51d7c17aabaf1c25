"""The browser tests' harness: one headless Chromium (Playwright) for the package, the app
served by pytest-django's live server (one for the session, a real socket and every
middleware), a real Celery worker on a queue of its own where a job must run, and
simulated terminals that poll the agent API over HTTP and complete their deliveries.

Chromium comes from the system (Debian's `chromium`, installed by scripts/lib.sh's
ensure_chromium); Playwright's own browser download is not used. A missing Chromium or
Playwright fails these tests, unless HOMEPOT_SKIP_BROWSER_TESTS=1 (never under CI=true):
see README, "Browser tests".
"""

import collections
import os
import shutil
import threading
from pathlib import Path

import pytest

from homepot.tests.browser.console import SCREENSHOTS, Console
from homepot.tests.celery_worker import running_worker
from jobs_app.tests.test_worker import TEST_BROKER

CHROMIUM = os.environ.get("HOMEPOT_CHROMIUM", "/usr/bin/chromium")
# --disable-background-networking and friends: without them Chromium's own connections
# (updates, sync, field trials) are refused by a closed network and slow every page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _opted_out() -> bool:
    # CI never skips: a CI machine without a browser fails these tests.
    return os.environ.get("HOMEPOT_SKIP_BROWSER_TESTS") == "1" and os.environ.get("CI") != "true"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)


def _unavailable(reason: str):
    hint = (
        "Install it with `apt-get install -y chromium` (./scripts/test.sh does, via ensure_chromium), "
        "point HOMEPOT_CHROMIUM at a Chromium or Chrome binary, or set HOMEPOT_SKIP_BROWSER_TESTS=1 "
        "to skip the browser tests on a machine without apt (not honoured under CI=true)."
    )
    if _opted_out():
        pytest.skip(f"browser tests skipped (HOMEPOT_SKIP_BROWSER_TESTS=1): {reason}")
    pytest.fail(f"{reason}. {hint}", pytrace=False)


@pytest.fixture(scope="package")
def chromium():
    """One headless Chromium for every browser test."""
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"No Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("The playwright package is not installed (pip install -r requirements.txt)")
    # Playwright's sync API runs an event loop in this thread; the tests' own ORM calls
    # (factories, assertions) are still plain synchronous code, so Django's guard against
    # ORM calls from async code is lifted for as long as the browser is up.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def console(chromium, live_server, transactional_db, request):
    """A fresh browser context (no cookies) on the live server, wrapped in the page helpers."""
    context = chromium.new_context(base_url=live_server.url, accept_downloads=True, locale="en-GB")
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield Console(page, live_server.url, test_name=request.node.name)
    context.close()


@pytest.fixture
def job_worker():
    """A real Celery worker (a thread of this process, as in jobs_app/tests/test_worker.py)
    on a queue of its own: the live server's job_create publishes there on commit."""
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-browser"):
        yield


@pytest.fixture
def terminals(live_server):
    """start(devices): simulated terminals (simulate_fleet's Terminal threads) that poll the
    live server's agent API, acknowledge each delivery and report it completed."""
    from devices_app.services import device_credential_issue
    from jobs_app.management.commands.simulate_fleet import FailShare, Terminal

    stop = threading.Event()
    threads = []
    stats = collections.Counter()
    options = {
        "base_url": live_server.url,
        "verbosity": 0,
        "poll_interval": 0.3,
        "work_seconds": 0.1,
        "failure_rate": 0.0,
        "fail_share": FailShare(0.0),
        "defer_prob": 0.0,
        "defer_seconds": 5,
        # Heartbeats and health reports every few seconds, as the demo's terminals send them.
        "heartbeat_interval": 5.0,
        "health_interval": 10.0,
        "demo": False,
        "stats_lock": threading.Lock(),
    }

    def start(devices, actor):
        for device in devices:
            _, secret = device_credential_issue(actor=actor, device=device)
            thread = Terminal(device, secret, options, stats, stop)
            thread.start()
            threads.append(thread)
        return stats

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=15)


def pytest_terminal_summary(terminalreporter):
    shots = sorted(SCREENSHOTS.glob("*.png")) if SCREENSHOTS.is_dir() else []
    if shots and any(Console.taken):
        terminalreporter.write_sep("-", f"browser screenshots ({len(Console.taken)} taken this run)")
        terminalreporter.write_line(str(SCREENSHOTS))
