"""The plan, before any byte moves: every tensor accounted for, shapes, tie, config, shards."""

from __future__ import annotations

import pytest
import tiny

from hyperclone_cli.checkpoint import open_checkpoint
from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.plan import assign_shards, make_plan
from hyperclone_cli.recipe import build_recipe


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "llama"
    cfg = tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True)
    return tiny.save(cfg, path)


def plan_of(path, **overrides):
    return make_plan(open_checkpoint(path), build_recipe(**overrides))


def test_every_source_tensor_is_planned_or_dropped_with_a_reason(llama):
    ckpt = open_checkpoint(llama)
    plan = make_plan(ckpt, build_recipe(factor=2))
    planned = {t.source for t in plan.tensors}
    dropped = {name for name, _ in plan.dropped}
    assert planned | dropped == set(ckpt.tensors)
    assert all(why for _, why in plan.dropped)


def test_shapes_and_sizes_follow_the_factor(llama):
    plan = plan_of(llama, factor=3, ffn_factor=2)
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.embed_tokens.weight"] == (tiny.VOCAB, 96)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (96, 96)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (48, 96)  # 2 kv heads × 3
    assert shapes["model.layers.0.mlp.up_proj.weight"] == (96, 96)  # ffn 48 × 2
    assert plan.sizes == {
        "hidden": 96, "embed": 96, "ffn": 96, "heads": 12, "kv_heads": 6, "head_dim": 8
    }  # fmt: skip
    assert plan.config["hidden_size"] == 96 and plan.config["intermediate_size"] == 96
    assert plan.config["num_attention_heads"] == 12 and plan.config["num_key_value_heads"] == 6
    assert plan.config["hyperclone"]["factor"] == 3
    assert plan.config["hyperclone"]["ffn_factor"] == 2


def test_kv_keep_keeps_the_kv_heads(llama):
    plan = plan_of(llama, factor=2, kv_heads="keep")
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (16, 64)
    assert plan.config["num_key_value_heads"] == 2


def test_tie_kept_by_scaling_the_final_norm(llama):
    plan = plan_of(llama, factor=4)
    assert plan.tie == "kept"
    assert "lm_head.weight" not in {t.name for t in plan.tensors}
    norm = next(t for t in plan.tensors if t.name == "model.norm.weight")
    assert norm.scale == pytest.approx(1 / 4)


def test_untie_on_request_writes_the_head(llama):
    plan = plan_of(llama, factor=2, tie="untie")
    assert plan.tie == "untied" and plan.config["tie_word_embeddings"] is False
    head = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert head.source == "model.embed_tokens.weight" and head.shape == (tiny.VOCAB, 64)


def test_noise_only_where_an_input_side_widens(llama):
    plan = plan_of(llama, factor=2, noise=10)
    noisy = {t.name for t in plan.tensors if t.noise}
    assert "model.layers.0.mlp.down_proj.weight" in noisy
    assert "model.embed_tokens.weight" not in noisy
    assert "model.norm.weight" not in noisy


def test_dtype_override_is_planned_and_written_to_the_config(llama):
    plan = plan_of(llama, factor=2, dtype="bf16")
    assert {str(t.dtype) for t in plan.tensors} == {"torch.bfloat16"}
    assert plan.config.get("dtype", plan.config.get("torch_dtype")) == "bfloat16"


def test_head_dim_refused_for_rotary_models(llama):
    with pytest.raises(HypercloneError, match="rotary"):
        plan_of(llama, factor=2, attention="head-dim")


def test_shards_respect_the_size_and_keep_order(llama):
    plan = plan_of(llama, factor=2)
    small = assign_shards(plan.tensors, 40_000)
    assert len(small) > 1
    assert [t.name for s in small for t in s.tensors] == [t.name for t in plan.tensors]
    for shard in small:
        assert len(shard.tensors) == 1 or shard.nbytes <= 40_000
    assert small[0].file == f"model-00001-of-{len(small):05d}.safetensors"
    assert [s.file for s in assign_shards(plan.tensors, 10**12)] == ["model.safetensors"]
