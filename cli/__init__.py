"""The `logitcache` command line (installed as the `logitcache_cli` package)."""
from logitcache.runtime.process import tune_process

# Before anything imports torch: set after `import torch`, the same allocator settings gained
# nothing here (2,983 vs 4,662 tokens/s training llama-small); see logitcache/runtime/process.py.
tune_process()
