"""Where a job creation's CPU goes, in process: per request, and of it the work after the
commit (the dispatcher's enqueue: Django's on_commit hooks); optionally a sampled call tree.

    python bench/profile_job_create.py --database homepot_x --code-root /tmp/base --rounds 3
    python bench/profile_job_create.py --database homepot_x --sample --depth 5
    python bench/profile_job_create.py --database homepot_x --sample --at "base.py:457(set_autocommit)"

Each round posts `--requests` jobs (restart_pos_app, bench_api_hot's body, at the fleet's sites
in turn) through Django's test client after 50 of warm-up, and prints this process's CPU per
request (time.process_time: Python and its system calls, not PostgreSQL's or Redis's) and the
CPU of the on_commit hooks per request. `--sample` samples the stack every millisecond of this
process's CPU (SIGPROF), unlike cProfile without inflating call-heavy code, and prints the tree
under the frame named by `--at` (default: the jobs API's create). The enqueued dispatch passes
go to a Celery queue of their own, deleted at the end. Run it with each code root in turn,
alternating, to compare two checkouts (see docs/performance.md, issue 11, jobs4).
"""

import argparse
import collections
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--code-root", default=".")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--sample", action="store_true", help="Also print a sampled call tree.")
    parser.add_argument("--at", default="views.py:105(create)", help="The tree's root frame (a substring).")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--min-percent", type=float, default=0.7)
    return parser.parse_args()


class StackSampler:
    """Every `interval` seconds of this process's CPU, the whole Python stack (SIGPROF)."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.stacks, self.samples = interval, collections.Counter(), 0

    def _sample(self, signum, frame):
        self.samples += 1
        stack = []
        while frame is not None:
            code = frame.f_code
            where = code.co_filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
            stack.append(f"{where}:{code.co_firstlineno}({code.co_name})")
            frame = frame.f_back
        self.stacks[tuple(reversed(stack))] += 1

    def __enter__(self):
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)

    def print_tree(self, root: str, depth: int, min_percent: float) -> None:
        totals: dict[tuple, int] = collections.Counter()
        for stack, count in self.stacks.items():
            start = next((i for i, frame in enumerate(stack) if root in frame), None)
            if start is None:
                continue
            path = stack[start : start + depth + 1]
            for end in range(1, len(path) + 1):
                totals[path[:end]] += count

        def order(path):
            return [(-totals[path[: i + 1]], path[i]) for i in range(len(path))]

        print(f"{self.samples} samples; percent of this process's CPU")
        for path in sorted(totals, key=order):
            percent = 100 * totals[path] / max(self.samples, 1)
            if percent >= min_percent:
                print(f"{percent:5.1f}% {'  ' * (len(path) - 1)}{path[-1]}")


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.bench_api_hot import django_setup, job_body, server_env

    env = server_env(argparse.Namespace(database=args.database, redis_db=args.redis_db), "profile_job_create")
    token, site_ids = django_setup(Path(args.code_root).resolve(), env)
    from django.conf import settings
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.test import Client

    settings.ALLOWED_HOSTS = ["*"]
    hooks = {"cpu": 0.0}
    run_hooks = BaseDatabaseWrapper.run_and_clear_commit_hooks

    def timed_hooks(self):
        start = time.process_time()
        try:
            return run_hooks(self)
        finally:
            hooks["cpu"] += time.process_time() - start

    BaseDatabaseWrapper.run_and_clear_commit_hooks = timed_hooks
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def create(i):
        response = client.post(
            "/api/v1/jobs", job_body(site_ids[i % len(site_ids)]), content_type="application/json"
        )
        assert response.status_code == 201, response.content

    try:
        for i in range(50):
            create(i)
        for round_number in range(1, args.rounds + 1):
            hooks["cpu"] = 0.0
            start = time.process_time()
            for i in range(args.requests):
                create(i)
            cpu = time.process_time() - start
            print(
                f"round {round_number}: {cpu * 1e6 / args.requests:.0f} us CPU per creation, of it "
                f"{hooks['cpu'] * 1e6 / args.requests:.0f} us after the commit (on_commit hooks)",
                flush=True,
            )
        if args.sample:
            with StackSampler() as sampler:
                for i in range(args.requests * 3):
                    create(i)
            sampler.print_tree(args.at, args.depth, args.min_percent)
    finally:
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).delete("profile_job_create")


if __name__ == "__main__":
    main()
