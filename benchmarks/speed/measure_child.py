"""Run one command; print its wall seconds and peak RSS as JSON on the last line of stdout.

    python -m benchmarks.speed.measure_child COMMAND [ARGS...]

A launcher of its own because a child's ``ru_maxrss`` starts at its parent's RSS at fork:
spawned straight from the benchmark (which has torch loaded, ~400 MiB) every run would read
at least that. This launcher imports nothing heavy, so the floor it passes on is ~10 MiB.
``wait4`` gives the rusage of that one child (and of whatever it waited for).
"""

import json
import os
import subprocess
import sys
import time


def main(command: list[str]) -> int:
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"wall_s": wall, "peak_rss_kib": usage.ru_maxrss, "returncode": process.returncode}))
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
