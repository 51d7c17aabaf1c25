"""What the Prometheus instrumentation adds to one heartbeat, in CPU time (issue 12).

    python bench/bench_metrics_cost.py                 # 200,000 calls, 7 repetitions
    python bench/bench_metrics_cost.py --calls 500000

A heartbeat through gunicorn costs the server a few milliseconds of CPU (bench_ingest.py,
`server_cpu_ms_per_request`), and on a shared 2-CPU machine two runs of that benchmark differ
by more than the 5 % budget, so an A/B of the whole request cannot resolve the metrics' cost.
This measures the added work itself, in this process's CPU time (time.process_time), exactly
as a heartbeat runs it: the HTTP middleware (two clock reads, the resolver match, the bound
counter and histogram) around a view that does nothing but the ingest counter's increment,
against the same view without the middleware and counter. Run with and without
PROMETHEUS_MULTIPROC_DIR (the script does both, in subprocesses): multiprocess mode writes
every increment to a memory-mapped file.

No database: the view stands in for the heartbeat's own work, which is unchanged.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(calls: int, repetitions: int) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ["HOMEPOT_ENV_FILE"] = ""
    import django

    django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.urls import resolve

    from homepot import metrics
    from homepot.metrics_middleware import HttpMetricsMiddleware

    response = HttpResponse(b"{}", content_type="application/json")
    request = RequestFactory().post("/api/v1/agent/heartbeat", data=b"", content_type="application/json")
    request.resolver_match = resolve("/api/v1/agent/heartbeat")

    def bare(request):
        return response

    def counted(request):
        metrics.HEARTBEAT_ACCEPTED.inc()  # what monitoring_app.ingest.heartbeat_record adds
        return response

    instrumented = HttpMetricsMiddleware(counted)

    def run(handler) -> float:
        started = time.process_time()
        for _ in range(calls):
            handler(request)
        return (time.process_time() - started) / calls * 1e6  # µs per call

    run(instrumented)  # warm: bind the label children once, as the first request does
    without, with_ = [], []
    for _ in range(repetitions):
        without.append(run(bare))
        with_.append(run(instrumented))
    added = [w - b for w, b in zip(with_, without, strict=True)]
    return {
        "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
        "calls": calls,
        "repetitions": repetitions,
        "added_us_per_request": {
            "median": round(statistics.median(added), 2),
            "min": round(min(added), 2),
            "max": round(max(added), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls, args.repetitions)))
        return
    results = []
    for multiprocess in (False, True):
        with tempfile.TemporaryDirectory() as directory:
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            if multiprocess:
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(  # noqa: S603 - this interpreter, this script
                [
                    sys.executable,
                    __file__,
                    "--child",
                    f"--calls={args.calls}",
                    f"--repetitions={args.repetitions}",
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
