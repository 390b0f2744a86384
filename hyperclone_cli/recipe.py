"""The Recipe: every choice an expansion makes, from YAML and flags, validated once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import HypercloneError

MAX_FACTOR = 64

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: str | int) -> int:
    """'5GB' → 5_000_000_000 (decimal units like transformers; KiB/MiB/GiB binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size like 5GB or 500MB")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if size < 1024:
        raise ValueError(f"{value!r} is too small for a shard (at least 1KB)")
    return size


class Recipe(BaseModel):
    """How to widen. Field names are the YAML keys; the CLI flags override them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    factor: int = Field(2, description="hidden-size multiplier n")
    ffn_factor: int | None = Field(None, description="FFN multiplier (default: factor)")
    attention: Literal["heads", "head-dim"] = "heads"
    kv_heads: Literal["replicate", "keep"] = "replicate"
    layout: Literal["symmetric", "diagonal"] = "symmetric"
    noise: float | None = Field(None, description="SNR in dB of symmetry-breaking noise; off")
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    tie: Literal["keep", "untie"] = "keep"
    verify: bool = True
    verify_tolerance: float | None = Field(None, gt=0)
    shard_size: str = "5GB"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("factor", "ffn_factor")
    @classmethod
    def _factor(cls, v: int | None) -> int | None:
        if v is not None and not 2 <= v <= MAX_FACTOR:
            raise ValueError(f"must be an integer from 2 to {MAX_FACTOR}, got {v}")
        return v

    @field_validator("noise")
    @classmethod
    def _noise(cls, v: float | None) -> float | None:
        if v is not None and not -20 <= v <= 200:
            raise ValueError(f"SNR must be between -20 and 200 dB, got {v}")
        return v

    @field_validator("shard_size")
    @classmethod
    def _shard(cls, v: str) -> str:
        parse_size(v)
        return v

    @property
    def n(self) -> int:
        return self.factor

    @property
    def m(self) -> int:
        return self.ffn_factor or self.factor

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size)


_FLAGS = {"verify_tolerance": "tolerance", "verify": "no-verify", "tie": "untie"}  # key → flag


def _one_line(err: ValidationError, where: str, flag: bool = False) -> str:
    """The first validation error as one line; `flag`: the value came from a command-line
    option (or a keyword of the Python API), so name it as the user typed it."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "recipe"
    if flag:
        where = f"{where} --{_FLAGS.get(loc, loc).replace('_', '-')}"
    if e["type"] == "extra_forbidden":
        known = ", ".join(Recipe.model_fields)
        return f"{where}: unknown key {loc!r} (known keys: {known})"
    msg = e["msg"].removeprefix("Value error, ")
    got = "" if "got" in msg else f" (got {e.get('input')!r})"
    return f"{where}: {msg}{got}" if flag else f"{where}: {loc}: {msg}{got}"


def load_recipe(path: str | Path | None = None, **overrides: object) -> Recipe:
    """A recipe from YAML (optional), with the non-None `overrides` applied on top."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise HypercloneError(f"recipe {path}: cannot read ({e.strerror})") from e
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0]
            raise HypercloneError(f"recipe {path}: not valid YAML ({first})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise HypercloneError(f"recipe {path}: expected a mapping of keys to values")
        data.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    flags = {k: v for k, v in overrides.items() if v is not None}
    data.update(flags)
    try:
        return Recipe(**data)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else ""
        if key in flags or path is None:
            raise HypercloneError(_one_line(e, "option", flag=True)) from e
        raise HypercloneError(_one_line(e, f"recipe {path}")) from e
