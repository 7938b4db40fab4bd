"""Run one command and print its wall time and peak RSS as JSON.

A process of its own, so that RUSAGE_CHILDREN's maximum is this command's and no other's.
"""

import json
import resource
import subprocess
import sys
import time

started = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
wall = time.perf_counter() - started
if code:
    sys.exit(code)
print(json.dumps({"wall_s": wall, "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
