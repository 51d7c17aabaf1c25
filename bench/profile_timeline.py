"""In-process cost of one device's timeline (issue 11: reads of one device within 10 ms),
on a soak database, through the soak's own door (bench_soak_interleaved.Worker: the API
client as an admin, today's partition seeded with 50 reports of each device read).

    python bench/profile_timeline.py --database homepot_soak5_0 --trials 9 --requests 40
    python bench/profile_timeline.py --database homepot_soak5_0 --profile --top 40

Per trial of `--requests` timelines of different devices: wall time, this thread's CPU, the
PostgreSQL backend's CPU and the statements, per request; then the medians over the trials
and their spread. To compare two checkouts, run this file from each (it imports the code of
the tree it lies in) one after the other, several times, alternating. `--profile`: a cProfile
of one more trial (CPU time, so waits on PostgreSQL and the machine's load stay out of it).
"""

import argparse
import cProfile
import datetime
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_soak_interleaved import Worker  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--requests", type=int, default=40, help="Timelines per trial.")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--dump", type=Path, help="Also write the profile's raw stats here.")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    worker = Worker(args.database)
    yesterday = (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)).isoformat()
    worker.setup(yesterday, args.seed, args.trials + 1, args.requests, ops=1)
    worker.trial("device_timeline", args.trials, ops=0)  # warm-up: imports, kept statements
    trials = [worker.trial("device_timeline", t, ops=0) for t in range(args.trials)]
    keys = ("wall_ms", "cpu_ms", "backend_ms", "statements")
    per_request = {key: [t[key] / t["operations"] for t in trials] for key in keys}
    print(
        json.dumps(
            {
                "database": args.database,
                "code": str(ROOT),
                "requests_per_trial": args.requests,
                "median": {key: round(statistics.median(v), 3) for key, v in per_request.items()},
                "spread": {key: [round(min(v), 3), round(max(v), 3)] for key, v in per_request.items()},
            }
        )
    )
    if args.profile:
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        worker.trial("device_timeline", 0, ops=0)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats(args.sort).print_stats(args.top)
        if args.dump:
            profiler.dump_stats(args.dump)


if __name__ == "__main__":
    main()
