"""The dense decoders beyond the core families: each built tiny from its transformers config
class with the features that change the math switched on (multipliers away from 1, biases,
q/k norms, ties), widened ×2 and ×3, loaded with no missing or unexpected keys, and its logits
and greedy tokens compared with the source's. Plus the options that touch their own tensors
(noise, --kv-heads keep, --untie) on the families that have such tensors."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from test_families import IDS, _greedy, assert_deepens_or_refuses, assert_same_function
from transformers import AutoConfig, AutoModelForCausalLM

from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.families import family_for
from hyperclone_cli.families.refusals import REFUSED
from hyperclone_cli.pipeline import expand

SMALL = dict(
    vocab_size=tiny.VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MUP = dict(
    embedding_multiplier=3.0,
    residual_multiplier=0.5,
    attention_multiplier=0.2,
    logits_scaling=4.0,
)
MLA = dict(
    num_key_value_heads=4,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=6,
    kv_lora_rank=12,
    q_lora_rank=10,
    head_dim=4,
)
MBERT = dict(
    num_key_value_heads=4,
    norm_bias=True,
    mlp_bias=True,
    attention_bias=True,
    classifier_bias=True,
    decoder_bias=True,
)
DORY = dict(num_hidden_layers=4, n_input_layers=1, n_output_layers=1, n_recurrent_loops=2)

# case → (model_type, config overrides, family)
CASES = {
    "arcee": ("arcee", {}, "arcee"),
    "cwm": ("cwm", {}, "cwm"),
    "helium": ("helium", {"tie_word_embeddings": True}, "helium"),
    "ministral": ("ministral", {}, "ministral"),
    "ministral3": ("ministral3", {}, "ministral3"),
    "seed_oss": ("seed_oss", {"attention_bias": True, "attention_out_bias": True}, "seed_oss"),
    "smollm3-tied": ("smollm3", {"tie_word_embeddings": True}, "smollm3"),
    "ernie4_5-bias-tied": ("ernie4_5", {"use_bias": True}, "ernie4_5"),
    "granite-mup-tied": ("granite", MUP | {"tie_word_embeddings": True}, "granite"),
    "granite_swa-sinks": ("granite_swa", MUP, "granite_swa"),
    "hyperclovax-mup": ("hyperclovax", MUP, "hyperclovax"),
    "exaone": ("exaone", {}, "exaone"),
    "exaone-tied": ("exaone", {"tie_word_embeddings": True}, "exaone"),
    "exaone4": ("exaone4", {}, "exaone4"),
    "vaultgemma": ("vaultgemma", {"query_pre_attn_scalar": 8}, "vaultgemma"),
    "cohere-qknorm": ("cohere", {"use_qk_norm": True, "logit_scale": 0.5}, "cohere"),
    "cohere2": ("cohere2", {"logit_scale": 0.5}, "cohere"),
    "nemotron-tied": ("nemotron", {"tie_word_embeddings": True}, "nemotron"),
    "apertus": ("apertus", {}, "apertus"),
    "apertus1p5": ("apertus1p5_text", {}, "apertus"),
    "bitnet": ("bitnet", {}, "bitnet"),
    "hunyuan": ("hunyuan_v1_dense", {}, "hunyuan_v1_dense"),
    "jais2-tied": ("jais2", {"tie_word_embeddings": True}, "jais2"),
    "glm": ("glm", {}, "glm"),
    "glm4-tied": ("glm4", {"tie_word_embeddings": True}, "glm"),
    "doge": ("doge", {"keep_window_size": 4}, "doge"),
    "youtu-tied": ("youtu", MLA, "youtu"),
    "minicpm3-tied": ("minicpm3", MLA | {"dim_model_base": 8, "scale_emb": 2.0}, "minicpm3"),
    "minicpm3-no-q-lora": ("minicpm3", MLA | {"q_lora_rank": None}, "minicpm3"),
    "dory": ("dory", DORY, "dory"),
    "dory-tied": ("dory", DORY | {"tie_word_embeddings": True}, "dory"),
    "nanochat": ("nanochat", {"final_logit_softcapping": 3.0}, "nanochat"),
    "nanochat-tied": ("nanochat", {"tie_word_embeddings": True}, "nanochat"),
    "modernbert-decoder-tied": ("modernbert-decoder", MBERT, "modernbert-decoder"),
    "modernbert-decoder": (
        "modernbert-decoder",
        MBERT | {"tie_word_embeddings": False, "num_attention_heads": 2, "head_dim": 16},
        "modernbert-decoder",
    ),
    "moshi": ("moshi", {"ffn_dim": 96}, "moshi"),
    "diffllama": ("diffllama", {}, "diffllama"),
    "diffllama-h8": ("diffllama", {"num_attention_heads": 8, "head_dim": 4}, "diffllama"),
}

# cases whose own tensors meet noise (input sides), --kv-heads keep, or --untie
EXTRA = [
    ("granite-mup-tied", {"factor": 2, "noise": 10.0}),
    ("granite-mup-tied", {"factor": 2, "tie": "untie"}),
    ("granite_swa-sinks", {"factor": 2, "kv_heads": "keep"}),
    ("cohere-qknorm", {"factor": 2, "kv_heads": "keep"}),
    ("cohere-qknorm", {"factor": 2, "noise": 10.0}),
    ("nemotron-tied", {"factor": 3, "ffn_factor": 2, "layout": "diagonal"}),
    ("exaone-tied", {"factor": 2, "tie": "untie"}),
    ("doge", {"factor": 2, "kv_heads": "keep"}),
    ("doge", {"factor": 2, "noise": 10.0}),
    ("minicpm3-tied", {"factor": 2, "noise": 10.0}),
    ("diffllama", {"factor": 2, "noise": 10.0}),
    ("bitnet", {"factor": 2, "kv_heads": "keep"}),
    ("modernbert-decoder-tied", {"factor": 2, "noise": 10.0}),
    ("modernbert-decoder-tied", {"factor": 2, "tie": "untie"}),
    ("dory", {"factor": 3, "ffn_factor": 2, "layout": "diagonal"}),
    ("diffllama-h8", {"factor": 3, "ffn_factor": 2, "layout": "diagonal", "noise": 10.0}),
    ("moshi", {"factor": 2, "ffn_factor": 3, "noise": 10.0}),
    ("moshi", {"factor": 2, "kv_heads": "keep"}),
    ("dory-tied", {"factor": 2, "noise": 10.0}),
    ("dory-tied", {"factor": 2, "tie": "untie"}),
]


def _config(name: str):
    model_type, extra, _ = CASES[name]
    return AutoConfig.for_model(model_type, **(SMALL | extra))


def _spread_all(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """tiny.spread, then every other vector or scalar parameter (attention sinks, residual
    gains, xIELU scalars, λ, nGPT scales) moved away from its initial value too: by ±30 % of
    it (Dory's scales are tiny numbers that multiply large ones), or by N(0, 0.3) from 0."""
    tiny.spread(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            plain = p.dim() <= 1 and not name.endswith("bias")
            if plain and not ("norm" in name and name.endswith("weight")):
                r = 0.3 * torch.randn(p.shape, generator=g)
                p.mul_(1 + r) if p.abs().max() > 0 else p.add_(r)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = _spread_all(AutoModelForCausalLM.from_config(_config(name)))
            path = tmp_path_factory.mktemp(name) / "src"
            model.save_pretrained(path)
            model = tiny.load(path)
            cache[name] = (path, tiny.logits(model, IDS), _greedy(model))
        return cache[name]

    return get


def _cases() -> list:
    cases = [pytest.param(name, {"factor": n}, id=f"{name}-x{n}") for name in CASES for n in (2, 3)]
    for name, opts in EXTRA:
        ident = "-".join(f"{k}={v}" for k, v in opts.items())
        cases.append(pytest.param(name, opts, id=f"{name}-{ident}"))
    return cases


@pytest.mark.parametrize("name,opts", _cases())
def test_dense_family_expands_exactly(sources, tmp_path, name, opts):
    src, src_logits, src_tokens = sources(name)
    plan = expand(src, tmp_path / "wide", verify=False, **opts).plan
    assert plan.family.name == CASES[name][2]
    tied = _config(name).tie_word_embeddings
    untied = opts.get("tie") == "untie" or not plan.family.tie_keepers  # NanoChat: no gains
    assert plan.tie == ("none" if not tied else "untied" if untied else "kept")
    assert plan.sizes["hidden"] == opts["factor"] * plan.dims.hidden
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


def test_minicpm3_keeps_its_logit_divisor(sources, tmp_path):
    """The final hidden state is divided by hidden_size / dim_model_base: both widen."""
    src, _, _ = sources("minicpm3-tied")
    expand(src, tmp_path / "wide", verify=False, factor=3)
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["dim_model_base"]) == (96, 24)


@pytest.mark.parametrize("name", ["diffllama", "youtu-tied", "modernbert-decoder"])
def test_kv_keep_refused_where_heads_pair_or_own_their_kv(sources, tmp_path, name):
    src, _, _ = sources(name)
    with pytest.raises(HypercloneError, match="--kv-heads keep is not possible"):
        expand(src, tmp_path / "wide", verify=False, factor=2, kv_heads="keep")


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_refused_architectures_name_their_reason(arch):
    with pytest.raises(HypercloneError) as e:
        family_for({"architectures": [arch], "model_type": "x"})
    message = str(e.value)
    assert message.startswith(f"config.json: {arch} cannot be widened exactly: ")
    assert REFUSED[arch] in message and "unsupported" not in message


def test_refusal_reaches_the_cli_as_one_line(tmp_path, cli):
    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["Gemma4UnifiedForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli("expand", src, tmp_path / "wide", "--factor", "2")
    assert code == 1 and "cannot be widened exactly: per-layer head sizes" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "wide").exists()


# Depth growth (--add-layers) with widening, for every model above: exact, or refused with
# the feature that makes a zeroed block something other than the identity.
DEPTH_REFUSED = {
    "doge": "residual",
    "dory": "nGPT",
    "minicpm3": "scale_depth",
    "diffllama": "layer",
    "modernbert-decoder": "differ",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_family_deepens_exactly_or_refuses(sources, tmp_path, name):
    refused = next((v for k, v in DEPTH_REFUSED.items() if name.startswith(k)), None)
    assert_deepens_or_refuses(*sources(name), tmp_path / "deep", refused)
