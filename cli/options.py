"""Typer options derived from the stage config dataclasses (logitcache/config.py).

`@config_command(DumpConfig)` turns `def command(config: DumpConfig, resume: ...)` into a Typer
command whose options are the config's fields (flag, type, choices, default and help all come from
the field), followed by the command's own options (--resume, --overwrite, --json). A nested config
field (`train: TrainConfig`) contributes its fields as flags of their own (`--lr`, `--max-steps`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from logitcache._settings import field_default
from logitcache.errors import LogitcacheError

from .common import handle_errors

SEP = "__"  # python name of a nested field: train__lr


@dataclasses.dataclass(frozen=True)
class CliField:
    """One CLI parameter derived from one (possibly nested) config field."""

    path: tuple[str, ...]  # ("train", "lr")
    annotation: typing.Any  # the field's type
    default: typing.Any  # dataclasses.MISSING when required
    flag: str
    help: str
    argument: bool

    @property
    def name(self) -> str:
        return SEP.join(self.path)

    @property
    def kind(self) -> str:
        """path-list (repeatable option), csv (comma-separated values), or plain."""
        if typing.get_origin(self.annotation) is tuple:
            return "path-list" if typing.get_args(self.annotation)[0] is Path else "csv"
        return "plain"

    def cli_annotation(self):
        if self.kind == "path-list":
            return Optional[list[Path]]
        if self.kind == "csv":
            return str
        return self.annotation

    def cli_default(self):
        if self.default is dataclasses.MISSING:
            return inspect.Parameter.empty
        if self.kind == "path-list":
            return list(self.default) or None
        if self.kind == "csv":
            return ",".join(map(str, self.default))
        return self.default

    def parameter(self) -> inspect.Parameter:
        info = typer.Argument(help=self.help) if self.argument else typer.Option(self.flag, help=self.help)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.cli_default(),
                                 annotation=Annotated[self.cli_annotation(), info])

    def to_config_value(self, value):
        """The CLI value as the config field wants it."""
        if self.kind == "path-list":
            return tuple(value or ())
        if self.kind == "csv":
            inner = typing.get_args(self.annotation)[0]
            items = [x.strip() for x in str(value).split(",") if x.strip()]
            if inner in (int, float):
                try:
                    return tuple(inner(x) for x in items)
                except ValueError:
                    kind = "integers" if inner is int else "numbers"
                    raise LogitcacheError(f"{self.flag} must be a comma-separated list of {kind}, got {value!r}") from None
            return tuple(items)
        return value


def cli_fields(cls, prefix: tuple[str, ...] = ()) -> list[CliField]:
    """Every field of a config class as a CLI field; nested config dataclasses are flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            out += cli_fields(annotation, prefix + (f.name,))
            continue
        out.append(CliField(prefix + (f.name,), annotation, field_default(f), f.metadata.get("flag") or
                            "--" + f.name.replace("_", "-"), f.metadata["help"], f.metadata.get("argument", False)))
    return out


def build_config(cls, fields: list[CliField], values: dict):
    """The config instance of the CLI values (nested configs built from their flattened fields)."""
    tree: dict = {}
    for f in fields:
        node = tree
        for part in f.path[:-1]:
            node = node.setdefault(part, {})
        node[f.path[-1]] = f.to_config_value(values[f.name])

    def make(klass, data: dict):
        hints = typing.get_type_hints(klass)
        kwargs = {k: make(hints[k], v) if isinstance(v, dict) else v for k, v in data.items()}
        return klass(**kwargs)

    return make(cls, tree)


def config_command(cls):
    """Decorator: the command's options are `cls`'s fields plus the function's own parameters."""

    def decorate(func):
        fields = cli_fields(cls)
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "config"]
        names = {f.name for f in fields}
        clash = names & {p.name for p in own}
        assert not clash, f"{func.__module__}: options {clash} are both config fields and command options"
        parameters = [f.parameter() for f in fields if f.argument] + [f.parameter() for f in fields if not f.argument]
        parameters += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        @functools.wraps(func)
        def command(**values):
            config = build_config(cls, fields, {n: values.pop(n) for n in names})
            return func(config, **values)

        command.__signature__ = inspect.Signature(parameters)
        command.config_class = cls
        return handle_errors(command)

    return decorate
