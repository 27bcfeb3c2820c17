"""logitcache: offline logit-caching distillation for small language models."""
__version__ = "0.1.0"

from .store import open_cache  # noqa: E402  (the public reader, docs/architecture.md)

__all__ = ["open_cache", "__version__"]
