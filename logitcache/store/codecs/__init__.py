"""The registry of probability codes: name -> the one object that encodes, decodes and documents it."""
from __future__ import annotations

import numpy as np

from ...errors import LogitcacheError
from .base import ProbCode
from .floats import FloatCode
from .log import LOG_RANGE_NATS, LogCode
from .sqrt import SqrtCode

# The codes a dump writes: the default (1 byte per entry, every kept entry the same expected KL), a log code
# below the KL of Megatron's fp16 log-probabilities at fewer bytes, and the two floats.
PROB_CODES: dict[str, ProbCode] = {
    "sqrt-u7": SqrtCode("sqrt-u7", 127),
    "log-s272": LogCode("log-s272", 16 * 272 + 1),  # step exactly 1/272 nat
    "float16": FloatCode("float16", np.float16),
    "float32": FloatCode("float32", np.float32),
}
PROB_DTYPES = tuple(PROB_CODES)
# Codes a cache may hold that a dump no longer writes: decoded as they always were, never written.
READ_ONLY_CODES: dict[str, ProbCode] = {
    "sqrt-u8": SqrtCode("sqrt-u8", 255),
    "log-u8": LogCode("log-u8", 256),
    "log-u7": LogCode("log-u7", 128),
    "log-u6": LogCode("log-u6", 64),
    "log-u9": LogCode("log-u9", 512),
    "log-u10": LogCode("log-u10", 1024),
    "log-u11": LogCode("log-u11", 2048),
    "log-u12": LogCode("log-u12", 4096),
    "log-u13": LogCode("log-u13", 8192),
}


def prob_codes_help() -> str:
    """'a, b (what they store); c (...)': the codes in registry order, neighbours that store alike together."""
    groups: list[tuple[str, list[str]]] = []
    for name, code in PROB_CODES.items():
        if groups and groups[-1][0] == code.help:
            groups[-1][1].append(name)
        else:
            groups.append((code.help, [name]))
    return "; ".join(f"{', '.join(names)} ({help})" for help, names in groups)


def prob_code(name: str) -> ProbCode:
    """The code of a cache's `prob_dtype`: one a dump writes, or a read-only one."""
    code = PROB_CODES.get(name) or READ_ONLY_CODES.get(name)
    if code is None:
        raise LogitcacheError(f"unknown prob dtype '{name}' (choose from {', '.join(PROB_DTYPES)})")
    return code


__all__ = ["LOG_RANGE_NATS", "PROB_CODES", "PROB_DTYPES", "READ_ONLY_CODES", "FloatCode", "LogCode", "ProbCode", "SqrtCode", "prob_code", "prob_codes_help"]
