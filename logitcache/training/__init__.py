"""The shared training loop and its parts: checkpoints, the cache loader, losses, metrics, the model's wrapping
over ranks (one process, DDP, FSDP2) and the memory plan of a step."""
