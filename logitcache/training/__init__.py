"""The shared training loop and its parts: checkpoints, the cache loader, losses, metrics, torch.distributed
helpers, and the process's allocator and thread settings."""
