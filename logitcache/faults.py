"""Test hooks, off unless their variable is set; each variable is read here and nowhere else.

    LOGITCACHE_FAULT_WRITE_PAUSE=SECONDS       a cache block waits between its data and its `done` marker
    LOGITCACHE_FAULT_CHECKPOINT_PAUSE=SECONDS  a checkpoint waits between its write and its rename
    LOGITCACHE_RAY_EVENTS=FILE                 every Ray dump worker appends its block events (JSON lines)

The kill tests (tests/faults/, tests/test_dump_ray.py) set them in the processes they kill, so a kill lands
inside the window a pause widens and the test knows which blocks a worker held; benchmarks/bench_ray.py
times the workers from their events.
"""
from __future__ import annotations

import os

EVENTS_VARIABLE = "LOGITCACHE_RAY_EVENTS"


def fault_pause(variable: str) -> None:
    """Sleep $variable seconds when set: lets the fault-injection tests kill a process mid-write."""
    seconds = os.environ.get(variable)
    if seconds:
        import time

        time.sleep(float(seconds))


def record_event(event: str, block: int) -> None:
    """One JSON line in $LOGITCACHE_RAY_EVENTS (O_APPEND: whole lines from every worker), when set."""
    path = os.environ.get(EVENTS_VARIABLE)
    if path:
        import json
        import time

        line = json.dumps({"event": event, "block": block, "pid": os.getpid(), "t": time.time()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
