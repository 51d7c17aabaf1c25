"""Page helpers for the operator console (Django admin today), one small group per page.

The tests say what an operator does ("search the devices for X", "run the action Pause on
job #3"); the selectors live here only, by visible text, role, label or id, so a page that
is reworked is adapted in one place. Every main page is also screenshotted (full page) and
checked with axe-core: `Console.check(name)`.
"""

import csv
import io
import os
import re
import time
from importlib import resources
from pathlib import Path

from playwright.sync_api import Page, expect

BASE_DIR = Path(__file__).resolve().parent.parent.parent.parent
SCREENSHOTS = Path(os.environ.get("HOMEPOT_BROWSER_SCREENSHOTS") or BASE_DIR / "var" / "browser-screenshots")
PASSWORD = "correct-horse-battery"  # accounts.tests.factories.UserFactory's

# axe-core's own bundle, shipped inside the axe-playwright-python wheel (pinned in
# requirements.txt): no CDN and no node at test time.
AXE_SOURCE = resources.files("axe_playwright_python").joinpath("axe.min.js").read_text(encoding="utf-8")
FAILING_IMPACTS = ("serious", "critical")

# The ONE place for known axe failures of the current pages: rule id -> the pages (Console.check
# names) where it is let through, the elements it may name (a pattern of their axe selectors: a
# new offender on the same page still fails), and why. Remove an entry when its page is fixed;
# everything else of impact serious or critical fails the page's test.
KNOWN_AXE_FAILURES: dict[str, dict] = {}


def _known(violation: dict, page_name: str) -> bool:
    known = KNOWN_AXE_FAILURES.get(violation["id"])
    if known is None or page_name not in known["pages"]:
        return False
    targets = (" ".join(str(t) for t in node["target"]) for node in violation["nodes"])
    return all(known["elements"].search(target) for target in targets)


class AccessibilityError(AssertionError):
    pass


def format_violations(page_name: str, url: str, violations: list[dict]) -> str:
    lines = [f"axe: {len(violations)} serious/critical violation(s) on {page_name} ({url}):"]
    for violation in violations:
        lines.append(f"  - [{violation['impact']}] {violation['id']}: {violation['help']}")
        lines.append(f"    {violation['helpUrl']}")
        for node in violation["nodes"][:5]:
            target = " ".join(str(t) for t in node["target"])
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            lines.append(f"      {target}: {summary}")
        if len(violation["nodes"]) > 5:
            lines.append(f"      … and {len(violation['nodes']) - 5} more")
    return "\n".join(lines)


class Console:
    taken: list[Path] = []  # every screenshot of this run, for the closing summary

    def __init__(self, page: Page, base_url: str, *, test_name: str):
        self.page = page
        self.base_url = base_url
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name)

    # --- Anywhere ---------------------------------------------------------------------------

    def goto(self, path: str) -> None:
        self.page.goto(path)

    def heading(self, text: str):
        return self.page.get_by_role("heading", name=text)

    def messages(self) -> str:
        """The admin's flash messages ("Paused 1 job(s)."), as one text."""
        return self.page.locator(".messagelist").inner_text()

    def check(self, name: str) -> list[dict]:
        """Screenshot the whole page to SCREENSHOTS/<test>--<name>.png and run axe-core on it;
        fail on serious or critical violations not listed in KNOWN_AXE_FAILURES."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.test_name}--{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        Console.taken.append(path)
        violations = self.axe()
        failing = [v for v in violations if v["impact"] in FAILING_IMPACTS and not _known(v, name)]
        if failing:
            raise AccessibilityError(format_violations(name, self.page.url, failing))
        return violations

    def axe(self) -> list[dict]:
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE_SOURCE)
        result = self.page.evaluate(
            "async () => await window.axe.run(document, {resultTypes: ['violations']})"
        )
        return result["violations"]

    # --- Log in and out ---------------------------------------------------------------------

    def login(self, username: str, password: str = PASSWORD, *, check: bool = False) -> None:
        self.goto("/admin/login/?next=/admin/")
        if check:
            self.check("login")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.get_by_role("button", name="Log out")).to_be_visible()

    def logout(self) -> None:
        self.page.get_by_role("button", name="Log out").click()
        expect(self.heading("Logged out")).to_be_visible()

    # --- Landing: the admin index and the fleet dashboard -----------------------------------

    def open_index(self) -> None:
        from django.contrib import admin

        self.goto("/admin/")
        expect(self.heading(str(admin.site.index_title))).to_be_visible()

    def index_sections(self) -> list[str]:
        """The app sections the index offers (their captions), e.g. "Devices"."""
        return [text.strip() for text in self.page.locator("#content-main caption").all_text_contents()]

    def open_fleet_dashboard(self) -> None:
        self.goto("/admin/monitoring_app/alert/fleet/")
        expect(self.heading("Fleet health")).to_be_visible()

    def dashboard_counts(self) -> dict[str, str]:
        """The fleet counts table (#fleet-counts): header -> value."""
        table = self.page.locator("#fleet-counts")
        headers = [t.strip() for t in table.locator("thead th").all_text_contents()]
        values = [t.strip() for t in table.locator("tbody td").all_text_contents()]
        return dict(zip(headers, values, strict=True))

    # --- Changelists (devices, sites, jobs, alerts, audit) ----------------------------------

    def open_changelist(self, app_model: str, query: str = "") -> None:
        self.goto(f"/admin/{app_model}/{query}")

    def search(self, text: str) -> None:
        self.page.locator("#searchbar").fill(text)
        self.page.locator("#searchbar").press("Enter")
        self.page.wait_for_load_state()

    def result_rows(self) -> list[str]:
        """The changelist's rows, each as its text."""
        return self.page.locator("#result_list tbody tr").all_inner_texts()

    def run_action(self, row_text: str, action_label: str) -> str:
        """Tick the row that shows `row_text`, run the action `action_label`, return the
        messages the admin answers with."""
        row = self.page.locator("#result_list tbody tr", has_text=row_text)
        row.get_by_role("checkbox").check()
        self.page.get_by_label("Action:").select_option(label=action_label)
        self.page.get_by_title("Run the selected action").click()
        return self.messages()

    def open_row(self, text: str) -> None:
        """Open the object of the changelist row that shows `text` (its first link)."""
        self.page.locator("#result_list tbody tr", has_text=text).get_by_role("link").first.click()
        self.page.wait_for_load_state()

    # --- Sites ------------------------------------------------------------------------------

    def open_sites(self) -> None:
        self.open_changelist("sites_app/site")

    # --- Devices ----------------------------------------------------------------------------

    def find_device(self, text: str) -> None:
        self.open_changelist("devices_app/device")
        self.search(text)

    def open_device(self, device_id: str) -> None:
        self.page.locator("#result_list").get_by_role("link", name=device_id, exact=True).click()
        expect(self.page.locator("#content h2, #content h1").first).to_be_visible()

    # --- Jobs: the add form with its preview, the change page -------------------------------

    def open_new_job(self) -> None:
        self.goto("/admin/jobs_app/job/add/")
        expect(self.heading("Add job")).to_be_visible()

    def pick_autocomplete(self, field: str, text: str) -> None:
        """Choose `text` in an autocomplete (select2) field, as an operator does: open it,
        type, click the match."""
        self.page.locator(f".field-{field} .select2-selection").click()
        self.page.locator(".select2-container--open .select2-search__field").fill(text)
        self.page.get_by_role("option", name=re.compile(re.escape(text))).first.click()

    def fill_job(self, *, site: str, action: str, description: str = "") -> None:
        self.pick_autocomplete("site", site)
        self.page.get_by_label("Action").select_option(label=action)
        if description:
            self.page.get_by_label("Description").fill(description)

    def preview_job(self) -> str:
        """Press "Review": the form comes back with the job's numbers (devices, sites, the
        estimate) as information, not as an error."""
        self.page.get_by_role("button", name=re.compile("^Review")).click()
        review = self.page.locator("#hp-review")
        expect(review).to_be_visible()
        expect(self.page.locator(".errornote")).to_have_count(0)
        return review.inner_text()

    def save_job(self) -> int:
        """Press "Confirm: create the job"; the job's id from its page, where the form lands."""
        self.page.get_by_role("button", name="Confirm: create the job").first.click()
        expect(self.page.locator(".messagelist")).to_contain_text(re.compile(r"Job #\d+ .* created"))
        match = re.search(r"/jobs_app/job/(\d+)/change/", self.page.url)
        assert match, self.page.url
        return int(match.group(1))

    def job_control(self, job_id: int, label: str, *, reason: str = "") -> str:
        """Press a control of the job's page (Pause, Resume, ...), then "Yes" on its
        confirmation page; the message the job's page shows after."""
        self.open_job(job_id)
        self.page.get_by_role("link", name=label, exact=True).click()
        if reason:
            self.page.get_by_label(re.compile("^Reason")).fill(reason)
        self.page.get_by_role("button", name=f"Yes, {label.lower()}").click()
        return self.messages()

    def open_job(self, job_id: int) -> None:
        self.goto(f"/admin/jobs_app/job/{job_id}/change/")

    def job_status(self) -> str:
        """The status the job's page shows (the badge of its "Status" line)."""
        return self.page.locator(".field-status_shown .hp-badge").first.inner_text().strip()

    def wait_for_job_status(self, job_id: int, status: str, *, deadline_seconds: float = 60) -> None:
        """Reload the job's page until it shows `status` (a generous deadline, not a timing
        assertion)."""
        give_up = time.monotonic() + deadline_seconds
        seen = None
        while time.monotonic() < give_up:
            self.open_job(job_id)
            seen = self.job_status()
            if seen == status:
                return
            self.page.wait_for_timeout(500)  # an operator pressing reload, not a wait for a save
        raise AssertionError(f"Job #{job_id} shows {seen!r}, not {status!r}, after {deadline_seconds} s")

    # --- Alerts -----------------------------------------------------------------------------

    def acknowledge_alert(self, message: str) -> str:
        self.open_changelist("monitoring_app/alert", "?state=open")
        return self.run_action(message, "Acknowledge selected alerts")

    # --- Audit trail ------------------------------------------------------------------------

    def export_audit_csv(self) -> list[dict]:
        """From the audit list, click "Export CSV"; the downloaded file's rows (header first)."""
        self.open_changelist("monitoring_app/auditlog")
        with self.page.expect_download() as download_info:
            self.page.get_by_role("link", name="Export CSV").click()
        download = download_info.value
        assert download.suggested_filename.endswith(".csv"), download.suggested_filename
        text = Path(download.path()).read_text(encoding="utf-8")
        return list(csv.reader(io.StringIO(text)))
