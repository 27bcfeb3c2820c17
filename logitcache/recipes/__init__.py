"""The shipped run recipes (demo.toml, demo-mixed.toml, babylm-paper.toml), installed as package data and
runnable by name: `logitcache run --config demo-mixed`."""
