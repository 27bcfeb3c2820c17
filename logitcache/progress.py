"""Progress hooks: the library reports progress through these; the CLI draws the bars."""
from __future__ import annotations


class ProgressHook:
    """No-op base. `start` a task with a total, `update` it, `finish` it."""

    def start(self, name: str, total: int | None = None) -> None:
        pass

    def update(self, advance: int = 1, **fields) -> None:
        pass

    def finish(self) -> None:
        pass


NULL_PROGRESS = ProgressHook()
