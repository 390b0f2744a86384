"""GPT-style, fused-projection and ALiBi families (issue 11): each built tiny from its
transformers config class, widened ×2 and ×3 (noise, head-dim attention, untie, kept k/v
heads where they apply), loaded with no missing or unexpected keys, logits compared. Plus
the types refused by name, and the hub file layouts these families are found in."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file
from test_families import (
    IDS,
    _greedy,
    _rewrite,
    assert_deepens_or_refuses,
    assert_same_function,
)
from transformers import (
    BioGptConfig,
    BloomConfig,
    CodeGenConfig,
    CpmAntConfig,
    CTRLConfig,
    FalconConfig,
    FuyuConfig,
    GPTBigCodeConfig,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoXJapaneseConfig,
    MptConfig,
    OpenAIGPTConfig,
    PersimmonConfig,
    PhiConfig,
    StableLmConfig,
    Starcoder2Config,
    XGLMConfig,
)

from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.inspection import inspect
from hyperclone_cli.pipeline import expand

V = dict(vocab_size=tiny.VOCAB)
HF = V | dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)  # Llama-like keys
GPT = V | dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)  # GPT-2-like keys
NODROP = dict(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)


def _falcon(**kw) -> FalconConfig:
    base = HF | dict(ffn_hidden_size=48, bias=True, alibi=False, max_position_embeddings=64)
    return FalconConfig(**(base | kw))


def _mpt(**attn) -> MptConfig:
    return MptConfig(**V, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, attn_config=attn)


# name → (config factory, family, options beyond x2 / x3 / noise)
HEAD_DIM = [{"attention": "head-dim"}]
UNTIE = [{"tie": "untie"}]
KEEP = [{"kv_heads": "keep"}]
MODELS = {
    "gpt_neo": (  # unscaled attention: head-dim scales q by 1/n
        lambda: GPTNeoConfig(
            **V,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=5,
            max_position_embeddings=64,
        ),
        "gpt_neo",
        HEAD_DIM + UNTIE,
    ),
    "gptj": (lambda: GPTJConfig(**GPT, **NODROP, rotary_dim=4), "gptj", []),
    "gptj-tied": (lambda: GPTJConfig(**GPT, rotary_dim=4, tie_word_embeddings=True), "gptj", []),
    "codegen": (lambda: CodeGenConfig(**GPT, **NODROP, rotary_dim=4, n_ctx=64), "codegen", []),
    "gpt_bigcode-mqa": (
        lambda: GPTBigCodeConfig(**GPT, **NODROP, n_inner=48),
        "gpt_bigcode",
        HEAD_DIM + UNTIE + [{"factor": 2, "ffn_factor": 4}],
    ),
    "gpt_bigcode-mha-unscaled": (
        lambda: GPTBigCodeConfig(**GPT, multi_query=False, scale_attn_weights=False),
        "gpt_bigcode",
        HEAD_DIM,
    ),
    "openai-gpt": (lambda: OpenAIGPTConfig(**GPT, **NODROP), "openai-gpt", HEAD_DIM),
    "biogpt": (
        lambda: BioGptConfig(**HF, intermediate_size=48, max_position_embeddings=64),
        "biogpt",
        HEAD_DIM + UNTIE,
    ),
    "biogpt-unscaled-embedding": (
        lambda: BioGptConfig(**HF, intermediate_size=48, scale_embedding=False),
        "biogpt",
        [],
    ),
    "phi-qk-layernorm": (
        lambda: PhiConfig(
            **HF,
            intermediate_size=48,
            num_key_value_heads=2,
            qk_layernorm=True,
            partial_rotary_factor=0.5,
        ),  # fmt: skip
        "phi",
        KEEP,
    ),
    "starcoder2": (
        lambda: Starcoder2Config(**HF, intermediate_size=48, num_key_value_heads=2),
        "starcoder2",
        KEEP + UNTIE,
    ),
    "stablelm-parallel": (
        lambda: StableLmConfig(
            **HF,
            intermediate_size=48,
            num_key_value_heads=2,
            use_qkv_bias=True,
            use_parallel_residual=True,
            partial_rotary_factor=0.25,
        ),  # fmt: skip
        "stablelm",
        KEEP,
    ),
    "stablelm-qk-layernorm": (  # one LayerNorm module per head: copied per head
        lambda: StableLmConfig(
            **HF, intermediate_size=48, num_key_value_heads=2, qk_layernorm=True
        ),  # fmt: skip
        "stablelm",
        KEEP,
    ),
    "persimmon": (
        lambda: PersimmonConfig(**HF, intermediate_size=48, qk_layernorm=True),
        "persimmon",
        [],
    ),
    "fuyu": (  # Persimmon inside, sizes in text_config
        lambda: FuyuConfig(
            text_config=HF | dict(intermediate_size=48, qk_layernorm=True),
            image_size=32,
            patch_size=8,
        ),  # fmt: skip
        "fuyu",
        [],
    ),
    "gpt_neox_japanese": (
        lambda: GPTNeoXJapaneseConfig(**HF, intermediate_multiple_size=2),
        "gpt_neox_japanese",
        UNTIE,
    ),
    "bloom": (lambda: BloomConfig(**HF), "bloom", UNTIE),  # ALiBi: head-dim by default
    "falcon-7b": (
        lambda: _falcon(multi_query=True, parallel_attn=True, bias=False),
        "falcon",
        KEEP + UNTIE,
    ),
    "falcon-40b": (
        lambda: _falcon(new_decoder_architecture=True, num_kv_heads=2, tie_word_embeddings=False),
        "falcon",
        KEEP,
    ),
    "falcon-mha-sequential": (
        lambda: _falcon(multi_query=False, parallel_attn=False),
        "falcon",
        [],
    ),
    "cpmant": (  # relative position bias per head: its columns follow the heads
        lambda: CpmAntConfig(**HF, dim_head=8, dim_ff=48),
        "cpmant",
        HEAD_DIM,
    ),
    "mpt": (lambda: _mpt(), "mpt", []),
    "mpt-fixed-softmax-scale": (lambda: _mpt(softmax_scale=0.1), "mpt", []),
}


def _cases() -> list:
    cases = []
    for name, (_, _, extra) in MODELS.items():
        opts = [{"factor": 2}, {"factor": 3}, {"factor": 2, "noise": 10.0}]
        opts += [{"factor": 2} | o for o in extra]
        if {"attention": "head-dim"} in extra:
            opts.append({"factor": 3, "attention": "head-dim", "noise": 10.0})
        cases += [pytest.param(name, o, id=f"{name}-" + _id(o)) for o in opts]
    return cases


def _id(opts: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in opts.items())


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            path = tiny.save(MODELS[name][0](), tmp_path_factory.mktemp(name) / "src")
            model = tiny.load(path)
            # CPM-Ant's generate() feeds prompt/segment inputs a plain forward does not
            greedy = None if name == "cpmant" else _greedy(model)
            cache[name] = (path, tiny.logits(model, IDS), greedy)
        return cache[name]

    return get


@pytest.mark.parametrize("name,opts", _cases())
def test_family_expands_exactly(sources, tmp_path, name, opts):
    src, src_logits, src_tokens = sources(name)
    plan = expand(src, tmp_path / "wide", verify=False, **opts).plan
    assert plan.family.name == MODELS[name][1]
    assert plan.sizes["hidden"] == opts["factor"] * plan.dims.hidden
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


@pytest.mark.parametrize("name", ["bloom", "mpt"])
def test_alibi_keeps_the_head_count(sources, tmp_path, cli, name):
    """ALiBi slopes follow the head count: heads are grown, never replicated, and asking
    for replicated heads is refused by name."""
    src, _, _ = sources(name)
    plan = expand(src, tmp_path / "wide", verify=False, factor=2).plan
    assert plan.recipe.attention == "head-dim" and plan.sizes["heads"] == plan.dims.heads
    assert any("ALiBi" in n for n in plan.notes)
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert cfg["hyperclone"]["attention"] == "head-dim"
    assert inspect(src, factor=2).expansion["attention"] == "head-dim"
    code, _, err = cli("expand", str(src), str(tmp_path / "w2"), "--attention", "heads")
    assert code != 0 and "ALiBi slopes depend on the number of heads" in err
    assert "--attention head-dim" in err and len(err.strip().splitlines()) == 1


def test_multi_query_keeps_its_one_kv_head(sources, tmp_path):
    src, _, _ = sources("gpt_bigcode-mqa")
    plan = expand(src, tmp_path / "wide", verify=False, factor=2).plan
    assert plan.dims.kv_heads == 1 and plan.sizes["kv_heads"] == 1
    with pytest.raises(HypercloneError, match="multi-query"):
        expand(src, tmp_path / "w2", verify=False, factor=2, kv_heads="replicate")


REFUSED = {
    "xglm": (lambda: XGLMConfig(**V, d_model=32, num_layers=2, attention_heads=4), "sinusoidal"),
    "ctrl": (lambda: CTRLConfig(**V, n_embd=32, n_layer=2, n_head=4, dff=48), "sinusoidal"),
    "falcon-alibi": (lambda: _falcon(alibi=True), "ALiBi"),
    "mpt-clip-qkv": (lambda: _mpt(clip_qkv=2.0), "clip_qkv"),
    "mpt-qk-ln": (lambda: _mpt(qk_ln=True), "qk_ln"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refusal_names_the_feature(tmp_path, cli, name):
    make, word = REFUSED[name]
    src = tiny.save(make(), tmp_path / "src")
    code, _, err = cli("expand", str(src), str(tmp_path / "wide"))
    assert code != 0
    line = err.strip()
    assert len(line.splitlines()) == 1 and "cannot be widened exactly" in line, line
    assert word in line and "unsupported architecture" not in line
    assert not (tmp_path / "wide").exists()


@pytest.mark.parametrize("name", ["openai-gpt", "bloom"])
def test_fixed_ffn_width_refuses_another_ffn_factor(sources, tmp_path, name):
    src, _, _ = sources(name)
    with pytest.raises(HypercloneError, match="--ffn-factor must equal --factor"):
        expand(src, tmp_path / "wide", verify=False, factor=2, ffn_factor=3)


def test_openai_gpt_tie_is_removed(sources, tmp_path):
    """No final norm carries the 1/n scale: the head is written explicitly."""
    src, _, _ = sources("openai-gpt")
    assert expand(src, tmp_path / "wide", verify=False, factor=2).plan.tie == "untied"
    assert "lm_head.weight" in load_file(tmp_path / "wide" / "model.safetensors")


def test_bloom_hub_layout_without_prefix(sources, tmp_path):
    """bigscience/bloom-* files store the base model's names (`h.0.…`)."""
    src, src_logits, src_tokens = sources("bloom")
    hub = _rewrite(src, tmp_path / "hub", lambda k: k.removeprefix("transformer."))
    expand(hub, tmp_path / "wide", verify=False, factor=2)
    names = load_file(tmp_path / "wide" / "model.safetensors")
    assert "h.0.self_attention.query_key_value.weight" in names
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


def test_gpt_neo_hub_buffers_are_dropped(sources, tmp_path):
    """EleutherAI/gpt-neo files carry the causal-mask buffers of every attention layer."""
    src, src_logits, src_tokens = sources("gpt_neo")
    mask = torch.tril(torch.ones(64, 64, dtype=torch.bool)).view(1, 1, 64, 64)
    buffers = {f"transformer.h.{i}.attn.attention.bias": mask.clone() for i in range(2)}
    buffers |= {f"transformer.h.{i}.attn.attention.masked_bias": torch.tensor(-1e9) for i in (0, 1)}
    hub = _rewrite(src, tmp_path / "hub", lambda k: k, buffers)
    result = expand(hub, tmp_path / "wide", verify=False, factor=2)
    assert sorted(
        d for d, _ in result.plan.dropped if "attention.bias" in d or "masked" in d
    ) == sorted(buffers)
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


def _maps(heads: int, kv: int, hd: int, **recipe) -> dict:
    from hyperclone_cli.families import Dims
    from hyperclone_cli.plan import space_maps
    from hyperclone_cli.recipe import build_recipe

    dims = Dims(hidden=heads * hd, ffn=4, heads=heads, kv_heads=kv, head_dim=hd, embed=heads * hd,
                layers=1, rotary=False)  # fmt: skip
    return space_maps(dims, build_recipe(factor=2, **recipe))[0]


def test_grouped_fused_qkv_map_by_hand():
    """Falcon-40B-like rows, 4 heads in 2 k/v groups of one dim each: per group
    [q q k v] = source rows [0 1 2 3 | 4 5 6 7]."""
    assert _maps(4, 2, 1)["qkv"].tolist() == [*range(8), *range(8)]  # groups tile
    keep = _maps(4, 2, 1, kv_heads="keep")  # each group's q heads side by side, k/v kept
    assert keep["qkv"].tolist() == [0, 0, 1, 1, 2, 3, 4, 4, 5, 5, 6, 7]
    grown = _maps(4, 2, 1, attention="head-dim")  # every head's dims repeated in place
    assert grown["qkv"].tolist() == [i // 2 for i in range(16)]
    assert grown["qkv:q"].tolist() == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4


def test_codegen_fused_qkv_map_by_hand():
    """CodeGen, hidden 4 (2 heads of 2): 4 blocks [q_j v_j k_j] of one row each, so q_j is
    row 3j, v_j row 3j+1, k_j row 3j+2. Widened, block j holds q'[2j:2j+2] etc. of the
    tiled q' = [q0 q1 q2 q3 q0 q1 q2 q3]."""
    rows = _maps(2, 2, 2)["qvk4"].tolist()
    assert rows[:6] == [0, 3, 1, 4, 2, 5] and rows[6:12] == [6, 9, 7, 10, 8, 11]
    assert rows[12:] == rows[:12]


# Depth growth (--add-layers) with widening: exact, or refused with the reason.
DEPTH_REFUSED = {
    "openai-gpt": "post-LN",
    "fuyu": "text_config",
    "gpt_neox_japanese": "layers differ",
    "cpmant": "residual",
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_family_deepens_exactly_or_refuses(sources, tmp_path, name):
    refused = next((v for k, v in DEPTH_REFUSED.items() if name.startswith(k)), None)
    assert_deepens_or_refuses(*sources(name), tmp_path / "deep", refused)
