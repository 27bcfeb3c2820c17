"""Fault-injection hooks: the tests kill a process inside the windows these widen."""
from __future__ import annotations

import os


def fault_pause(variable: str) -> None:
    """Sleep $variable seconds when set: lets the fault-injection tests kill a process mid-write."""
    seconds = os.environ.get(variable)
    if seconds:
        import time

        time.sleep(float(seconds))
