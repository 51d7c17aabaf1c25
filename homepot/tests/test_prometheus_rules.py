"""The shipped Prometheus rules and Grafana dashboard only name metrics HOMEPOT exports, and
are well formed: Prometheus' own `promtool check rules` parses the rule file, `promtool test
rules` runs its unit tests (deploy/prometheus/rules_test.yml: the SLO, sweep and ingest alerts
fire, and stay quiet, on series shaped like ours), and a small reader checks what promtool
cannot know: metric names from homepot.metrics (with the suffixes their type gives them) or
recorded by the rules, histogram bounds that exist, in the rules and the dashboard's panels.

promtool comes from Debian's `prometheus` package; ./scripts/test.sh (and so CI) installs it
(scripts/lib.sh, ensure_promtool). Without it these tests fail rather than skip."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from homepot import metrics  # noqa: F401 - registers every HOMEPOT metric

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "homepot.json"

FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "absent", "time",
    "clamp_min", "clamp_max", "max_over_time", "min_over_time", "avg_over_time", "vector",
    "label_replace", "sort_desc", "timestamp",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def exported() -> dict[str, object]:
    """Every series name HOMEPOT can export -> its family (histogram bounds, labels)."""
    names = {}
    for family in REGISTRY.collect():
        if family.name.startswith("homepot_"):
            for suffix in SUFFIXES.get(family.type, ("",)):
                names[family.name + suffix] = family
    return names


def histogram_bounds(name: str) -> set[float]:
    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", None) == name and hasattr(collector, "_upper_bounds"):
            return set(collector._upper_bounds)
    raise AssertionError(f"no histogram {name}")


def read_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def all_rules():
    return [rule for group in read_rules()["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in all_rules() if "record" in rule}


def expressions():
    for rule in all_rules():
        yield rule.get("record") or rule["alert"], rule["expr"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']}", target["expr"]


def check_promql(expr: str, known: set[str]) -> list[str]:
    """Problems found in `expr` (empty: none)."""
    problems = []
    stack = []
    pairs = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "({[":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            problems.append(f"unbalanced {char!r}")
    if stack:
        problems.append(f"unclosed {stack}")
    for bound in re.findall(r'(\w+)_bucket\{[^}]*le="([^"]+)"', expr):
        name, le = bound
        if float(le) not in histogram_bounds(name):
            problems.append(f"{name} has no bucket le={le}")
    body = re.sub(r'"[^"]*"', "", expr)
    body = re.sub(r"\{[^}]*\}", "", body)  # label matchers
    body = re.sub(r"\[[^\]]*\]", "", body)  # ranges
    body = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", body)  # label lists
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?", body):
        word, call = match.group(0).rstrip("( \n"), match.group(1)
        if call:
            if word not in FUNCTIONS:
                problems.append(f"unknown function {word}")
        elif word not in KEYWORDS and word not in known and not re.fullmatch(r"\d+[smhd]?|e", word):
            problems.append(f"unknown metric {word}")
    return problems


def test_rule_file_structure():
    groups = read_rules()["groups"]
    assert groups and len({group["name"] for group in groups}) == len(groups)
    names = []
    for rule in all_rules():
        assert ("record" in rule) != ("alert" in rule), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "record" in rule:
            # Prometheus' naming convention for recorded series: level:metric:operations.
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
            assert set(rule) <= {"record", "expr", "labels"}
        else:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert rule["annotations"]["summary"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
        names.append(rule.get("record") or rule["alert"])
    assert len(names) == len(set(names))


def test_the_issue_s_rules_are_there():
    alerts = {rule["alert"]: rule["expr"] for rule in all_rules() if "alert" in rule}
    assert 'le="60"' in next(
        r["expr"] for r in all_rules() if r.get("record", "").startswith("homepot:delivery_acked")
    )
    assert "0.99" in alerts["HomepotDeliveryAckSLOBreached"]
    assert "homepot_sweep_last_run_timestamp_seconds" in alerts["HomepotSweepNotRunning"]
    assert "120" in alerts["HomepotSweepNotRunning"]
    assert "homepot:heartbeat_refused:ratio_rate5m" in alerts["HomepotHeartbeatIngestErrors"]


@pytest.mark.parametrize(("name", "expr"), list(expressions()), ids=lambda v: v if len(v) < 60 else v[:60])
def test_every_expression_names_only_exported_metrics(name, expr):
    assert check_promql(expr, set(exported()) | recorded()) == []


def test_the_checker_catches_mistakes():
    known = set(exported())
    assert check_promql("rate(homepot_no_such_thing_total[5m])", known) == [
        "unknown metric homepot_no_such_thing_total"
    ]
    assert check_promql("sum(rate(homepot_http_requests_total[5m])", known) == ["unclosed ['(']"]
    assert check_promql('homepot_delivery_stage_seconds_bucket{le="61"}', known) == [
        "homepot_delivery_stage_seconds has no bucket le=61"
    ]
    assert check_promql("rated(homepot_http_requests_total[5m])", known) == ["unknown function rated"]


def promtool(*args) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (./scripts/test.sh does it)")
    return subprocess.run([path, *args], capture_output=True, text=True, check=False)  # noqa: S603


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_broken_rule(tmp_path):
    # The check is not a formality: an expression Prometheus cannot parse is refused.
    broken = read_rules()
    broken["groups"][0]["rules"][0]["expr"] = "sum(rate(homepot_http_requests_total[5m])"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(broken))
    result = promtool("check", "rules", str(path))
    assert result.returncode != 0
