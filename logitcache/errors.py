"""The one exception type the CLI turns into a single line and exit code 2."""


class LogitcacheError(Exception):
    """Bad input or an unusable artifact: reported as one line, never a traceback."""


class ResumeMismatchError(LogitcacheError):
    """An existing cache (or half-created one) was made with another config, so it cannot be resumed.
    `differences`: each differing setting as "key: old in the cache, new here" (empty for a layout change)."""

    def __init__(self, message: str, differences: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.differences = list(differences)


class CacheCorruptError(LogitcacheError):
    """A cache block failed its checksum or could not be decoded."""

    def __init__(self, message: str, block: int | None = None):
        super().__init__(message)
        self.block = block
