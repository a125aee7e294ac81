"""
Run twistd with the arguments given, optionally timing the garbage collector.

``python3 bench/run_agent.py [--gc-stats FILE] TWISTD-ARGS...`` is what
``bench/kv.py`` starts instead of the ``twistd`` script (whose path depends on
how Python was installed). With ``--gc-stats`` it records the count, total and
longest pause of the collections of each generation, and writes them to FILE
as JSON on SIGUSR1, so that the bench can read how much of a run the
collector took. Nothing of the agent is changed.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time


def time_collections(path: str) -> None:
    stats = {str(g): {"count": 0, "total_s": 0.0, "max_s": 0.0} for g in range(3)}
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        s = stats[str(info["generation"])]
        s["count"] += 1
        s["total_s"] += took
        s["max_s"] = max(s["max_s"], took)

    def write() -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"gc": stats}, f)
        os.replace(tmp, path)
        for s in stats.values():
            s["max_s"] = 0.0  # the next reading shows the longest pause since this one

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, lambda signum, frame: write())


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--gc-stats"]:
        time_collections(args[1])
        args = args[2:]
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *args]
    run()


if __name__ == "__main__":
    main()
