"""Redis's own time per call of the identity script (devices_app.identity_store), two code
roots side by side, on a private redis-server (nothing else counted in its statistics).

    python bench/bench_identity_script.py /tmp/base . [--port 8211] [--rounds 3] [--calls 20000]

Loads each root's lookup script, stores 1,000 credentials with their device entries and
sightings, then per round and root resets `INFO commandstats` and makes `--calls` EVALSHA
calls that answer and note a heartbeat (pipelined, 1,000 per round trip). Prints Redis's
`usec_per_call` for each: the server's CPU per heartbeat, whatever the machine's load does to
the client.
"""

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import redis

ANSWERED = ("online", "maintenance", "error")
DEVICES = 1000


def lookup_script(root: str) -> str:
    source = Path(root, "devices_app", "identity_store.py").read_text()
    start = source.index('_LOOKUP_LUA = """') + len('_LOOKUP_LUA = """')
    body = source[start : source.index('""".replace', start)]
    return body.replace("STATUS_NOT_ANSWERED", " and ".join(f"status ~= '{s}'" for s in ANSWERED))


def arguments(script: str) -> list[str]:
    """ARGV after the two keys: the entries' prefix, the buffered value, and (scripts with
    sightings) the freshness in ms and the sighting's expiry."""
    if "ARGV[3]" in script:
        return ["p:", "1733390000.000000|", "150000", "300"]
    return ["p:d:", "1733390000.000000|"]


def fill(client: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    for pk in range(DEVICES):
        client.set(f"p:c:{pk}", f"{pk}|{pk}|1733390000")
        client.set(f"p:d:{pk}", f"online|7|pos|DEV-{pk:06d}")
        client.set(f"p:s:{pk}", now_ms)


def usec_per_call(client: redis.Redis, sha: str, args: list[str], calls: int) -> float:
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for number in range(calls):
        pipe.evalsha(sha, 2, f"p:c:{number % DEVICES}", "p:seen", *args)
        if number % 1000 == 999:
            assert all(pipe.execute()), "the script did not answer"
            pipe = client.pipeline(transaction=False)
    pipe.execute()
    return client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--port", type=int, default=8211)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20000)
    options = parser.parse_args()
    server = subprocess.Popen(  # noqa: S603 - the local redis-server and our own arguments
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(options.port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=options.port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        fill(client)
        scripts = {root: lookup_script(root) for root in options.roots}
        shas = {root: client.script_load(script) for root, script in scripts.items()}
        for number in range(options.rounds):
            for root, script in scripts.items():
                usec = usec_per_call(client, shas[root], arguments(script), options.calls)
                print(f"round {number} {root}: {usec:.2f} us per call")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
