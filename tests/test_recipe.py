"""The Recipe: one validating path, flags over YAML, messages in our words."""

from __future__ import annotations

import pydantic
import pytest

from hyperclone_cli.errors import EXIT_INPUT, EXIT_USAGE, HypercloneError
from hyperclone_cli.recipe import Recipe, build_recipe, choices, flag_of, parse_size


def test_defaults():
    r = build_recipe()
    assert (r.factor, r.ffn_factor, r.ffn_multiplier) == (2, None, 2)
    assert (r.attention, r.kv_heads, r.layout, r.tie, r.device) == (
        "heads",
        "replicate",
        "symmetric",
        "keep",
        "auto",
    )
    assert r.verify and r.noise is None and r.dtype is None
    assert r.shard_bytes == 5 * 10**9


def test_yaml_then_flags(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("factor: 3\nffn-factor: 4\nnoise: 10\nseed: 7\n")
    r = build_recipe(f, factor=2, seed=None)
    assert (r.factor, r.ffn_factor, r.noise, r.seed) == (2, 4, 10.0, 7)


def test_ffn_multiplier_follows_factor_unless_set():
    assert build_recipe(factor=4).ffn_multiplier == 4
    assert build_recipe(factor=4, ffn_factor=2).ffn_multiplier == 2
    # an override of factor on a recipe that left ffn_factor unset moves the FFN too
    assert build_recipe(build_recipe(factor=2), factor=3).ffn_multiplier == 3


@pytest.mark.parametrize(
    "overrides",
    [{"factor": 1}, {"factor": 65}, {"attention": "bogus"}, {"noise": 500}, {"shard_size": "x"}],
)
def test_overrides_of_a_recipe_object_are_validated(overrides):
    # model_copy(update=...) would have skipped validation; build_recipe never does
    with pytest.raises(HypercloneError) as e:
        build_recipe(Recipe(), **overrides)
    assert e.value.code == EXIT_USAGE


def test_recipe_is_immutable():
    r = Recipe()
    with pytest.raises(pydantic.ValidationError):
        r.factor = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spelling", "dtype"),
    [("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")],
)
def test_dtype_spellings(spelling, dtype):
    assert build_recipe(dtype=spelling).dtype == dtype


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"factor": 1}, ["option --factor", "2 to 64", "got 1"]),
        ({"attention": "bogus"}, ["option --attention", "heads", "head-dim", "'bogus'"]),
        ({"verify_tolerance": -1}, ["option --tolerance", "greater than 0"]),
        ({"seed": "x"}, ["option --seed", "whole number"]),
        ({"noise": "loud"}, ["option --noise", "must be a number"]),
        ({"dtype": "int8"}, ["option --dtype", "float32", "'int8'"]),
        ({"shard_size": "5"}, ["option --shard-size", "too small"]),
        ({"colour": "red"}, ["unknown key 'colour'", "known keys"]),
    ],
)
def test_flag_errors_are_ours(overrides, needles):
    with pytest.raises(HypercloneError) as e:
        build_recipe(**overrides)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, msg
    assert "Input should" not in msg and "Value error" not in msg
    assert "\n" not in msg


def test_file_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("seed: 1.5\n")
    with pytest.raises(HypercloneError) as e:
        build_recipe(f)
    assert str(e.value).startswith(f"recipe {f}: seed: ")
    assert "fractional part" in str(e.value)
    assert e.value.code == EXIT_INPUT


def test_a_flag_fixes_a_bad_file_value(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("factor: 1\n")
    assert build_recipe(f, factor=3).factor == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [("- a\n", "expected a mapping"), ("factor: [2\n", "not valid YAML")],
)
def test_malformed_files(tmp_path, text, needle):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(HypercloneError, match=needle):
        build_recipe(f)


def test_missing_file(tmp_path):
    with pytest.raises(HypercloneError, match="cannot read"):
        build_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 2**30), ("2048", 2048), (4096, 4096)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_choices_and_flags_come_from_the_recipe():
    assert choices("attention") == ("heads", "head-dim")
    assert choices("dtype") == ("float32", "bfloat16", "float16")
    assert flag_of("verify_tolerance") == "--tolerance"
    assert flag_of("kv_heads") == "--kv-heads"
