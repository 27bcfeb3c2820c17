"""The `logitcache` command line (installed as the `logitcache_cli` package)."""
