"""The field machinery behind the stage dataclasses of config.py: setting(), the TOML sections derived from
them, dict round-trip, strict loading, hashing."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any

from .errors import LogitcacheError


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, argument: bool = False,
            in_run: bool = True, affects_output: bool = True, default_factory: Any = dataclasses.MISSING):
    """A config field with what the CLI and `run` derive from it: the option's help text, its flag
    (default: --field-name), whether it is a positional argument, whether it is a key of the
    stage's section in `run`'s TOML (False for the paths and wiring that `run` fills in itself), and
    whether its value can change the stage's output bytes (False for speed knobs such as thread
    counts: a resume may change those, never the others)."""
    metadata = {"help": help, "flag": flag, "argument": argument, "in_run": in_run,
                "affects_output": affects_output}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def config_dataclass(cls):
    """A stage's settings as a frozen dataclass whose instances are checked before the class's own
    __post_init__ runs: every float setting (and each number of a tuple of floats) must be finite. Infinity
    and NaN pass range checks such as `temperature > 0` and make uniform or NaN targets without a word."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        check_finite(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)


@functools.cache
def float_fields(cls) -> tuple[str, ...]:
    """The names of `cls`'s fields that hold floats: float, Optional[float] or tuple[float, ...]."""
    def floats(annotation) -> bool:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple, list):
            return any(floats(a) for a in args if a is not Ellipsis)
        return annotation is float

    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if floats(hints[f.name]))


def check_finite(config) -> None:
    """Refuse, by name, a float setting of `config` that is infinite or NaN."""
    for name in float_fields(type(config)):
        value = getattr(config, name)
        for number in value if isinstance(value, (tuple, list)) else (value,):
            check(not isinstance(number, numbers.Real) or math.isfinite(number),  # np.float32 is no float
                  f"{name} must be a finite number, got {number}")


def field_default(f: dataclasses.Field):
    """A field's default value (MISSING when it is required)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def section_of(cls, name: str, extra: list[tuple] = ()) -> type:
    """The TOML section of a stage in `run`: the stage config's fields that `run` does not wire itself
    (same types, defaults and help), plus `extra` run-only fields. Derived, so never out of step."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("in_run", True):
            continue
        kwargs = {"metadata": f.metadata}
        if f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        specs.append((f.name, hints[f.name], dataclasses.field(**kwargs)))
    # keyword-only: required and defaulted fields may come in any order (TOML tables are built by name)
    return dataclasses.make_dataclass(name, list(extra) + specs, frozen=True, kw_only=True,
                                      namespace={"__post_init__": check_finite})


def settings_of(section) -> dict:
    """The field values of a run section that belong to the stage config (no run-only extras)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if not f.metadata.get("run_only", False)}


def to_dict(config) -> dict:
    """A JSON-ready dict of a (nested) config dataclass; paths become strings."""

    def convert(value):
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def _coerce(key: str, annotation, value):
    """Check `value` against a field annotation; name the key in the error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except LogitcacheError as exc:
                errors.append(str(exc))
        raise LogitcacheError(errors[0])  # a union holds a type besides None, so one error at least
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise LogitcacheError(f"config key '{key}' must be a table, got {type(value).__name__}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise LogitcacheError(f"config key '{key}' must be a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        # a table of an array names itself by its name key, as --set addresses it (teachers.NAME.lr)
        return tuple(_coerce(f"{key}.{v['name']}" if isinstance(v, dict) and isinstance(v.get("name"), str) else key,
                             inner, v) for v in value)
    if origin is typing.Literal:
        if value not in args:
            raise LogitcacheError(f"config key '{key}' must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise LogitcacheError(f"config key '{key}' must be a path string, got {value!r}")
        return Path(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LogitcacheError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML reads inf and nan as floats
            raise LogitcacheError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LogitcacheError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise LogitcacheError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise LogitcacheError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build a config dataclass from a dict, refusing unknown keys and wrong types by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise LogitcacheError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LogitcacheError(f"config '{prefix.rstrip('.') or cls.__name__}': {exc}") from None


def config_hash(config) -> str:
    """A short stable hash of a config, used to decide whether an output matches it."""
    blob = json.dumps(to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check(condition: bool, message: str) -> None:
    """Validation inside __post_init__: raise the one-line error type."""
    if not condition:
        raise LogitcacheError(message)


