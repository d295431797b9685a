"""Sizes on the command line: ``48M``, ``1.5G``, ``512k`` or plain bytes.

Why. Every size and rate option took a number of bytes only: ``cubby sync --max-upload-rate
2M`` was refused as "not a valid float", and a server's budgets had to be written out as
50331648. rsync, curl and most of what people already use take a unit suffix; so does cubby.
The units are powers of 1024 (K, M, G, T, with or without a trailing ``B`` or ``iB``), as in
rsync's ``--bwlimit``.
"""

from __future__ import annotations

import re
from typing import Any

import click

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """Bytes in ``text`` (``48M``, ``1.5G``, ``4096``); `ValueError` if it is not a size."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size: use bytes, or a number with K, M, G or T (powers of 1024), as in 48M")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


class ByteSize(click.ParamType):
    """A click option of a size (`parse_size`): whole bytes, or a rate in bytes per second
    (``rate``: a float), at least ``minimum``."""

    name = "size"

    def __init__(self, *, minimum: int = 0, rate: bool = False) -> None:
        self.minimum = minimum
        self.rate = rate

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            n = float(value)
        else:
            try:
                n = parse_size(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if n < self.minimum:
            self.fail(f"{value} is less than the least allowed, {self.minimum} bytes", param, ctx)
        return n if self.rate else int(n)


__all__ = ["ByteSize", "parse_size"]


def count_of(n: int, noun: str) -> str:
    """``1 operation``, ``2 operations``: a count and its noun, as a person reads them in a
    summary line (nouns whose plural is the noun and an ``s``)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
