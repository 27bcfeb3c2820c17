"""The shipped run configs (demo.toml, babylm-paper.toml), installed as package data."""
