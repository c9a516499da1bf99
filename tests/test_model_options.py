"""Architecture options beyond GPT-2: RoPE, RMSNorm, QK-norm, ReLU² and SwiGLU MLPs, an
untied head. Each is a switch whose default keeps GPT-2 exactly; every path (KV cache,
padding, packed masks, attention weights, generation) must work with all of them."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

from gptkit.config import MODEL_PRESETS, ModelConfig, load_config
from gptkit.errors import GptkitError
from gptkit.generation.sampling import generate
from gptkit.model import GPT, AttentionContext, mlp_width, rotary_angles
from gptkit.viz.capture import attention_weights, capture_attention
from tests.generation_opts import opts
from tests.test_model import assert_causal

VOCAB = 37
BLOCK = 24
OPTIONS: list[dict[str, Any]] = [
    {"pos_embedding": "rope"},
    {"norm": "rmsnorm"},
    {"qk_norm": True},
    {"mlp": "relu2"},
    {"mlp": "swiglu"},
    {"tie_embeddings": False},
    {"bias": False},
    {"pos_embedding": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2",
     "tie_embeddings": False, "bias": False},
]
# every combination of the switches (96 tiny models)
ALL = [
    dict(zip(("pos_embedding", "norm", "qk_norm", "mlp", "tie_embeddings", "bias"), values,
             strict=True))
    for values in itertools.product(("learned", "rope"), ("layernorm", "rmsnorm"),
                                    (False, True), ("gelu", "relu2", "swiglu"), (True, False),
                                    (True, False))
]


def tiny(dtype: torch.dtype = torch.float64, **overrides: Any) -> GPT:
    settings = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": BLOCK, "vocab_size": VOCAB}
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**settings, **overrides})).to(dtype).eval()
    with torch.no_grad():  # non-trivial gains and biases, so that a mix-up would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_ids(batch: int, tokens: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def test_defaults_are_gpt2():
    gpt2 = {"pos_embedding": "learned", "norm": "layernorm", "qk_norm": False, "mlp": "gelu",
            "tie_embeddings": True}
    assert all(getattr(ModelConfig(), k) == v for k, v in gpt2.items())
    a, b = tiny(), tiny(**gpt2)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert isinstance(a.transformer.ln_f, nn.LayerNorm) and a.transformer.wpe is not None
    assert a.lm_head.weight is a.transformer.wte.weight
    with torch.device("meta"):
        assert GPT(ModelConfig(**MODEL_PRESETS["gpt2"])).num_params() == 124_439_808


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_each_option_builds_and_learns(options):
    model = tiny(torch.float32, **options).train()
    idx = random_ids(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        assert loss is not None
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_changing_future_tokens_never_changes_earlier_logits(options):
    model = tiny(**options)
    idx = random_ids(2, 20)
    assert_causal(model, idx, model(idx)[0])


@pytest.mark.parametrize("options", ALL, ids=str)
def test_kv_cache_decoding_equals_full_forward_for_every_combination(options):
    model = tiny(**options)
    idx = random_ids(3, 20)
    full, _ = model(idx)
    cache = model.new_kv_cache(3)
    pieces, start = [], 0
    for size in (5, 1, 4, 7, 1, 2):
        pieces.append(model(idx[:, start : start + size], kv_cache=cache)[0])
        start += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)
    # the explicit attention path (attention_weights) computes the same network
    with capture_attention():
        explicit = model.transformer(idx)
    torch.testing.assert_close(explicit, model.transformer(idx))


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_left_padded_rows_with_a_cache_equal_each_row_alone(options):
    model = tiny(**options)
    ids = random_ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0  # row 0 is left-padded by 4
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = model.new_kv_cache(2)
    prefill, _ = model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions)
    nxt = random_ids(2, 1, seed=3)
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    step, _ = model(nxt, kv_cache=cache, attention_mask=mask,
                    position_ids=positions[:, -1:] + 1)
    alone, _ = model(torch.cat([ids[:1, 4:], nxt[:1]], dim=1))
    torch.testing.assert_close(prefill[0, 4:], alone[0, :-1])
    torch.testing.assert_close(step[0, 0], alone[0, -1])
    both, _ = model(torch.cat([ids[1:], nxt[1:]], dim=1))
    torch.testing.assert_close(torch.cat([prefill[1], step[1]]), both[0])


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_packed_examples_with_a_block_mask_equal_each_example_alone(options):
    """SFT packing: positions restart per example and a 3-D mask keeps examples apart."""
    model = tiny(**options)
    a, b = random_ids(1, 5), random_ids(1, 7, seed=2)
    documents = torch.tensor([[0] * 5 + [1] * 7])
    mask = documents[:, :, None] == documents[:, None, :]
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    packed, _ = model(torch.cat([a, b], dim=1), attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(packed[:, :5], model(a)[0])
    torch.testing.assert_close(packed[:, 5:], model(b)[0])


@pytest.mark.parametrize("options", [{"pos_embedding": "rope"},
                                     {"pos_embedding": "rope", "qk_norm": True}], ids=str)
def test_attention_weights_reproduce_the_attention_output_with_rope_and_qk_norm(options):
    model = tiny(torch.float32, **options)
    idx = random_ids(2, 24)
    weights = attention_weights(model, idx)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 2, 24), atol=1e-6, rtol=0)
    rope = rotary_angles(torch.arange(24)[None], 8)
    x = model.transformer.wte(idx)
    for layer, block in enumerate(model.transformer.h):
        h = block.ln_1(x)
        _, _, v = block.attn.c_attn(h).split(16, dim=2)
        v = v.view(2, 24, 2, 8).transpose(1, 2)  # (B, n_head, T, head_dim)
        y = (weights[layer] @ v).transpose(1, 2).reshape(2, 24, 16)
        attn_out = block.attn(h, AttentionContext(rope=rope))  # the fused SDPA path
        torch.testing.assert_close(block.attn.c_proj(y), attn_out, atol=1e-5, rtol=0)
        x = block(x, AttentionContext(rope=rope))


def test_rope_has_no_position_table_and_depends_only_on_distances():
    model = tiny(pos_embedding="rope")
    assert model.transformer.wpe is None
    assert not [k for k in model.state_dict() if "wpe" in k]
    assert model.num_params(non_embedding=True) == model.num_params()
    # the same text at shifted positions gives the same logits (learned positions would not)
    idx = random_ids(1, 10)
    shifted = torch.arange(7, 17)[None]
    torch.testing.assert_close(model(idx, position_ids=shifted)[0], model(idx)[0])
    learned = tiny()
    assert not torch.allclose(learned(idx, position_ids=shifted)[0], learned(idx)[0])


def test_rmsnorm_and_qk_norm_modules():
    model = tiny(norm="rmsnorm", qk_norm=True)
    block = model.transformer.h[0]
    assert all(isinstance(m, nn.RMSNorm) for m in (block.ln_1, block.ln_2, model.transformer.ln_f))
    assert block.attn.q_norm is not None and block.attn.q_norm.weight.shape == (8,)
    names = set(model.state_dict())
    assert "transformer.h.0.attn.q_norm.weight" in names and "transformer.ln_f.bias" not in names
    # no LayerNorm biases: the norms hold n_embd gains each, qk-norm two head_dim gains
    assert tiny().num_params() - tiny(norm="rmsnorm").num_params() == (2 * 2 + 1) * 16
    assert tiny(qk_norm=True).num_params() - tiny().num_params() == 2 * 2 * 8


def test_mlp_widths_and_parameter_counts():
    assert mlp_width(ModelConfig(n_embd=768, mlp="swiglu")) == 2048  # 8/3 x 768
    assert mlp_width(ModelConfig(n_embd=128, mlp="swiglu")) == 384  # rounded up to 64s
    assert mlp_width(ModelConfig(n_embd=128, mlp="relu2")) == 512
    gelu, relu2, swiglu = (tiny(mlp=kind, n_embd=96) for kind in ("gelu", "relu2", "swiglu"))
    assert relu2.num_params() == gelu.num_params()
    assert swiglu.transformer.h[0].mlp.c_fc.weight.shape == (2 * 256, 96)
    with torch.device("meta"):
        big = {k: GPT(ModelConfig(**MODEL_PRESETS["gpt2"], mlp=k)).num_params()
               for k in ("gelu", "swiglu")}
    # the same weights in three 2048-wide matrices as in two 3072-wide ones; c_fc bias wider
    assert big["swiglu"] == big["gelu"] + 12 * (2 * 2048 - 3072)


def test_untied_head_has_its_own_weights():
    model = tiny(torch.float32, tie_embeddings=False)
    head, embedding = model.lm_head.weight, model.transformer.wte.weight
    assert head is not embedding and head.data_ptr() != embedding.data_ptr()
    assert model.num_params() - tiny(torch.float32).num_params() == VOCAB * 16
    # the token table is only looked up; the head's matrix multiply counts as work
    assert model.num_params(non_embedding=True) == model.num_params() - (VOCAB + BLOCK) * 16
    assert model.flops_per_token() == 6 * model.num_params(non_embedding=True) + 12 * 2 * 16 * 24
    before = embedding.detach().clone()
    _, loss = model(random_ids(2, 8), targets=random_ids(2, 8, seed=5))
    assert loss is not None
    loss.backward()
    torch.optim.SGD([head], lr=1.0).step()  # the head moves, the embedding does not
    assert torch.equal(embedding, before) and not torch.equal(head, before)


def test_checkpoint_round_trip_keeps_an_untied_head_apart(tmp_path):
    from gptkit.weights import load_weights, save_weights

    model = tiny(torch.float32, tie_embeddings=False, pos_embedding="rope", mlp="swiglu")
    save_weights(model, tmp_path / "model.safetensors")
    other = tiny(torch.float32, tie_embeddings=False, pos_embedding="rope", mlp="swiglu")
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, tmp_path / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert other.lm_head.weight is not other.transformer.wte.weight


@pytest.mark.parametrize("options", OPTIONS[:1] + OPTIONS[-1:], ids=str)
def test_generation_with_cache_and_sliding_window_equals_full_forwards(options):
    model = tiny(**options)
    prompt = random_ids(1, 6)[0].tolist()
    out = generate(model, prompt, opts(max_new_tokens=BLOCK + 6, temperature=0))[0].tolist()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(BLOCK + 6):  # full forward over the last block_size tokens each step
            seq.append(int(model(torch.tensor([seq[-BLOCK:]]))[0][0, -1].argmax()))
    assert out == seq
    batch = generate(model, [prompt, prompt[3:]], opts(max_new_tokens=5, temperature=0), eot_id=0)
    alone = generate(model, prompt[3:], opts(max_new_tokens=5, temperature=0), eot_id=0)
    assert batch[1, 3:].tolist() == alone[0].tolist()


@pytest.mark.parametrize(("setting", "message"), [
    ("model.pos_embedding=alibi", "model.pos_embedding must be learned or rope"),
    ("model.norm=batchnorm", "model.norm must be layernorm or rmsnorm"),
    ("model.mlp=geglu", "model.mlp must be gelu, relu2 or swiglu"),
    ("model.qk_norm=maybe", "model.qk_norm must be bool"),
])
def test_bad_option_values_are_errors_naming_the_key(setting, message):
    with pytest.raises(GptkitError, match=message):
        load_config("shakespeare-char", [setting])


def test_rope_needs_an_even_head_size():
    with pytest.raises(GptkitError, match="even head size"):
        load_config("shakespeare-char", ["model.pos_embedding=rope", "model.n_embd=12",
                                         "model.n_head=4"])
    with pytest.raises(GptkitError, match="model.mlp must be"):
        GPT(ModelConfig(vocab_size=VOCAB, mlp="gated"))
