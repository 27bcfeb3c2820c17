"""logitcache: offline logit-caching distillation for small language models."""
__version__ = "0.1.0"

__all__ = ["open_cache", "__version__"]


def __getattr__(name: str):
    """`logitcache.open_cache` (the public reader, docs/architecture.md) without importing zarr up front:
    the CLI imports this package, and `logitcache --help` should not pay for the store."""
    if name == "open_cache":
        from .store import open_cache

        return open_cache
    raise AttributeError(f"module 'logitcache' has no attribute {name!r}")
