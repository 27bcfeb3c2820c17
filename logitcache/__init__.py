"""logitcache: offline logit-caching distillation for small language models."""
__version__ = "0.1.0"

from .cache import open_cache  # noqa: E402  (public reader, DESIGN.md section 9)

__all__ = ["open_cache", "__version__"]
