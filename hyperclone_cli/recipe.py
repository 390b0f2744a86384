"""The Recipe: every choice an expansion makes, from YAML and flags, validated once.

There is one way to make a Recipe: `build_recipe(base, **overrides)`, which merges a YAML
file (or an existing Recipe) with keyword overrides and validates the result as a whole.
Its error messages are ours, not the validation library's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import EXIT_USAGE, HypercloneError

MAX_FACTOR = 64

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

# Other spellings users type for the dtypes, mapped to the one the recipe stores.
DTYPE_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
}


def parse_size(value: str | int) -> int:
    """'5GB' → 5_000_000_000 (decimal units like transformers; KiB/MiB/GiB binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError("must be a size like 5GB or 500MB")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if size < 1024:
        raise ValueError("is too small for a shard (at least 1KB)")
    return size


Attention = Literal["heads", "head-dim"]
KVHeads = Literal["replicate", "keep"]
Layout = Literal["symmetric", "diagonal"]
DType = Literal["float32", "bfloat16", "float16"]
Tie = Literal["keep", "untie"]
Device = Literal["auto", "cpu", "cuda"]
Placement = Literal["even", "top", "bottom"]
MAX_ADD_LAYERS = 1024
MAX_EXPERTS = 1024


class CombinationError(ValueError):
    """A value wrong only together with others: `key` names the one to report."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Recipe(BaseModel):
    """How to widen. Field names are the YAML keys; the CLI flags override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: int = Field(2, description="hidden-size multiplier n")
    ffn_factor: int | None = Field(None, description="FFN multiplier (default: factor)")
    attention: Attention = "heads"
    kv_heads: KVHeads = "replicate"
    layout: Layout = "symmetric"
    noise: float | None = Field(None, description="SNR in dB of symmetry-breaking noise; off")
    seed: int = 0
    dtype: DType | None = None
    tie: Tie = "keep"
    verify: bool = True
    verify_tolerance: float | None = Field(None, gt=0)
    shard_size: str = "5GB"
    device: Device = "auto"
    add_layers: int | None = Field(None, description="new decoder blocks (depth growth)")
    layer_placement: Placement = "even"
    experts: int | None = Field(None, description="upcycle a dense model into E experts")
    top_k: int | None = Field(None, description="experts per token when upcycling (default 2)")

    @model_validator(mode="before")
    @classmethod
    def _growth_only(cls, data: object) -> object:
        """`--add-layers K` or `--experts E` alone grows only that way: the factor is 1 then."""
        grows = isinstance(data, dict) and (data.get("add_layers") or data.get("experts"))
        if grows and data.get("factor") is None:
            return {**data, "factor": 1}
        return data

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if not 1 <= v <= MAX_FACTOR:  # 1 only with another growth option: _growth below
            raise ValueError(f"must be an integer from 2 to {MAX_FACTOR}")
        return v

    @field_validator("ffn_factor")
    @classmethod
    def _ffn_factor(cls, v: int | None) -> int | None:
        if v is not None and not 2 <= v <= MAX_FACTOR:
            raise ValueError(f"must be an integer from 2 to {MAX_FACTOR}")
        return v

    @field_validator("add_layers")
    @classmethod
    def _add_layers(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_ADD_LAYERS:
            raise ValueError(f"must be an integer from 1 to {MAX_ADD_LAYERS}")
        return v

    @field_validator("experts")
    @classmethod
    def _experts(cls, v: int | None) -> int | None:
        if v is not None and not 2 <= v <= MAX_EXPERTS:
            raise ValueError(f"must be an integer from 2 to {MAX_EXPERTS}")
        return v

    @model_validator(mode="after")
    def _growth(self) -> Recipe:
        if self.factor == 1 and not (self.add_layers or self.experts):
            raise CombinationError(
                "factor",
                f"must be an integer from 2 to {MAX_FACTOR} (1 only with --add-layers or "
                "--experts)",
            )
        if self.top_k is not None and not self.experts:
            raise CombinationError("top_k", "applies only when upcycling; add --experts E")
        if self.top_k is not None and not 1 <= self.top_k <= self.experts:
            raise CombinationError(
                "top_k", f"must be an integer from 1 to --experts {self.experts}"
            )
        return self

    @property
    def experts_per_token(self) -> int | None:
        """Top-k when upcycling: `top_k`, or 2."""
        if not self.experts:
            return None
        return self.top_k or min(2, self.experts)

    @field_validator("noise")
    @classmethod
    def _noise(cls, v: float | None) -> float | None:
        if v is not None and not -20 <= v <= 200:
            raise ValueError("must be an SNR between -20 and 200 dB")
        return v

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: object) -> object:
        return DTYPE_ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else v

    @field_validator("shard_size", mode="before")
    @classmethod
    def _shard(cls, v: object) -> str:
        parse_size(v)  # type: ignore[arg-type]
        return str(v)

    @property
    def ffn_multiplier(self) -> int:
        """The FFN's multiplier: `ffn_factor`, or `factor` when the recipe leaves it unset."""
        return self.ffn_factor or self.factor

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size)


def choices(key: str) -> tuple[str, ...]:
    """The values a Literal-typed recipe key accepts (the CLI builds its choices from these)."""

    def values(annotation: object) -> list[str]:
        if get_origin(annotation) is Literal:
            return [str(a) for a in get_args(annotation)]
        return [v for arg in get_args(annotation) for v in values(arg)]  # Optional[Literal]

    return tuple(values(Recipe.model_fields[key].annotation))


# The one place where a recipe key and its command-line flag differ. Every other key's flag
# is `--key-with-dashes`.
FLAG_OF_KEY = {"verify_tolerance": "--tolerance", "verify": "--no-verify", "tie": "--untie"}


def flag_of(key: str) -> str:
    return FLAG_OF_KEY.get(key, "--" + key.replace("_", "-"))


def _what_is_wrong(e: dict) -> str:
    """One validation error in our words."""
    kind, ctx = e["type"], e.get("ctx") or {}
    got = e.get("input")
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '').replace(chr(39), '')} (got {got!r})"
    if kind in ("int_parsing", "int_type"):
        return f"must be a whole number (got {got!r})"
    if kind == "int_from_float":
        return f"must be a whole number, without a fractional part (got {got!r})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {got!r})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {got!r})"
    if kind in ("string_type",):
        return f"must be text (got {got!r})"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')} (got {got!r})"
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {got!r})"


def _one_line(err: ValidationError, where: str | None) -> str:
    """The first validation error as one line: `where` is the recipe file, or None when
    the value came from a command-line flag or a keyword of the Python API."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or _combination_key(e) or "recipe"
    if not e["loc"] and isinstance(e.get("input"), dict):  # a whole-recipe check: its value
        e = {**e, "input": e["input"].get(key)}
    if e["type"] == "extra_forbidden":
        known = ", ".join(Recipe.model_fields)
        place = f"recipe {where}" if where else "option"
        return f"{place}: unknown key {key!r} (known keys: {known})"
    if where is None:
        return f"option {flag_of(key)}: {_what_is_wrong(e)}"
    return f"recipe {where}: {key}: {_what_is_wrong(e)}"


def _combination_key(e: dict) -> str | None:
    cause = (e.get("ctx") or {}).get("error")
    return cause.key if isinstance(cause, CombinationError) else None


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HypercloneError(f"recipe {path}: cannot read ({e.strerror}); check the path") from e
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise HypercloneError(f"recipe {path}: not valid YAML ({first})") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise HypercloneError(f"recipe {path}: expected a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def build_recipe(base: Recipe | str | Path | None = None, **overrides: object) -> Recipe:
    """The one way to make a Recipe: `base` (a Recipe, a YAML path, or None for the
    defaults) with the non-None `overrides` applied on top, validated as a whole.

    A bad value in the YAML file is named with the file (exit 1); a bad override is named
    as the flag a user types, and is a usage error (exit 2)."""
    path: Path | None = None
    if isinstance(base, Recipe):
        data = base.model_dump(exclude_unset=True)
    elif base is not None:
        path = Path(base)
        data = _read_yaml(path)
    else:
        data = {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        # the file alone first, so that its errors name the file even when a flag is bad too
        if path is not None:
            Recipe(**data)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else ""
        # a value wrong only in combination may be fixed by a flag: judged on the whole
        if key not in flags and not _combination_key(e.errors()[0]):
            raise HypercloneError(_one_line(e, str(path))) from e
    try:
        return Recipe(**(data | flags))
    except ValidationError as e:
        key = _combination_key(e.errors()[0])
        if path is not None and key is not None and key not in flags:
            raise HypercloneError(_one_line(e, str(path))) from e
        raise HypercloneError(_one_line(e, None), code=EXIT_USAGE) from e


def load_recipe(path: str | Path | None = None, **overrides: object) -> Recipe:
    """A recipe from YAML (optional), with the non-None `overrides` applied on top."""
    return build_recipe(path, **overrides)
