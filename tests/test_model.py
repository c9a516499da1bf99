"""The GPT model: causality, KV cache, sizes, initialisation, loss, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.config import MODEL_PRESETS, ModelConfig
from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.viz.capture import attention_weights, capture_attention

VOCAB = 37


def tiny(dtype: torch.dtype = torch.float64, **overrides) -> GPT:
    settings = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 24, "vocab_size": VOCAB}
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**settings, **overrides})).to(dtype).eval()


def random_ids(batch: int, tokens: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def assert_causal(model: GPT, idx: torch.Tensor, logits: torch.Tensor) -> None:
    """Changing the tokens of `idx` (20 long) after a position changes none of the `logits`
    up to it, and does change later ones."""
    for t in (0, 7, 18):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 5) % model.config.vocab_size
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])


def test_changing_future_tokens_never_changes_earlier_logits():
    model = tiny()
    idx = random_ids(2, 20)
    logits, loss = model(idx)
    assert logits.shape == (2, 20, VOCAB) and loss is None
    assert_causal(model, idx, logits)


@pytest.mark.parametrize("chunks", [[1] * 20, [5, 1, 4, 7, 1, 2], [20], [3, 17]])
def test_kv_cache_decoding_equals_full_forward(chunks):
    model = tiny()
    idx = random_ids(3, sum(chunks))
    full, _ = model(idx)
    cache = model.new_kv_cache(3)
    pieces, start = [], 0
    for size in chunks:
        logits, _ = model(idx[:, start : start + size], kv_cache=cache)
        pieces.append(logits)
        start += size
        assert cache.length == start
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_logits_to_keep_computes_only_the_last_positions():
    model = tiny()
    idx = random_ids(2, 12)
    full, _ = model(idx)
    for keep in (1, 3, 12):
        logits, _ = model(idx, logits_to_keep=keep)
        assert logits.shape == (2, keep, VOCAB)
        torch.testing.assert_close(logits, full[:, -keep:])
    cache = model.new_kv_cache(2)  # a prefill through the cache: only the last position's
    model(idx[:, :7], kv_cache=cache, logits_to_keep=1)
    logits, _ = model(idx[:, 7:], kv_cache=cache, logits_to_keep=2)
    torch.testing.assert_close(logits, full[:, -2:])
    with pytest.raises(GptkitError, match="logits_to_keep"):
        model(idx, logits_to_keep=-1)
    with pytest.raises(GptkitError, match="logits_to_keep"):
        model(idx, targets=idx, logits_to_keep=1)


def test_unembed_of_a_decoding_step_follows_the_weights():
    model = tiny(torch.float32)
    x = torch.randn(3, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.unembed(x), model.lm_head(x))
        model.lm_head.weight.mul_(2)  # in place (as an optimizer step): the copy is stale
        torch.testing.assert_close(model.unembed(x), model.lm_head(x))
    x.requires_grad_(True)
    model.unembed(x).sum().backward()  # with gradients: lm_head itself, exactly
    assert x.grad is not None and model.lm_head.weight.grad is not None


def test_kv_cache_prefill_of_one_row_fills_every_row():
    model = tiny()
    prompt = random_ids(1, 6)
    cache = model.new_kv_cache(4)
    model(prompt, kv_cache=cache)
    nxt = random_ids(4, 1, seed=2)
    logits, _ = model(nxt, kv_cache=cache)
    full, _ = model(torch.cat([prompt.expand(4, -1), nxt], dim=1))
    torch.testing.assert_close(logits[:, 0], full[:, -1])
    with pytest.raises(GptkitError, match="batch of 1"):
        model(random_ids(1, 1), kv_cache=cache)


def test_kv_cache_reset_starts_over():
    model = tiny()
    idx = random_ids(1, 8)
    cache = model.new_kv_cache(1)
    model(random_ids(1, 5, seed=3), kv_cache=cache)
    cache.reset()
    assert cache.length == 0
    logits, _ = model(idx, kv_cache=cache)
    torch.testing.assert_close(logits, model(idx)[0])
    assert cache.k.dtype == torch.float64 and cache.k.shape == (2, 1, 2, 24, 8)


def test_gpt2_preset_has_gpt2_parameter_count_and_hf_names():
    with torch.device("meta"):
        model = GPT(ModelConfig(**MODEL_PRESETS["gpt2"], bias=True))
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    expected = {
        "transformer.wte.weight": (50257, 768),
        "transformer.wpe.weight": (1024, 768),
        "transformer.h.0.ln_1.weight": (768,),
        "transformer.h.0.ln_1.bias": (768,),
        "transformer.h.0.attn.c_attn.weight": (3 * 768, 768),
        "transformer.h.0.attn.c_attn.bias": (3 * 768,),
        "transformer.h.0.attn.c_proj.weight": (768, 768),
        "transformer.h.0.attn.c_proj.bias": (768,),
        "transformer.h.0.ln_2.weight": (768,),
        "transformer.h.0.ln_2.bias": (768,),
        "transformer.h.0.mlp.c_fc.weight": (4 * 768, 768),
        "transformer.h.0.mlp.c_fc.bias": (4 * 768,),
        "transformer.h.0.mlp.c_proj.weight": (768, 4 * 768),
        "transformer.h.0.mlp.c_proj.bias": (768,),
        "transformer.ln_f.weight": (768,),
        "transformer.ln_f.bias": (768,),
        "lm_head.weight": (50257, 768),
    }
    per_layer = [k for k in expected if ".h.0." in k]
    assert set(shapes) == set(expected) | {
        k.replace(".h.0.", f".h.{i}.") for k in per_layer for i in range(12)
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name


def test_no_bias_option_removes_every_bias():
    model = tiny(bias=False)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    with_bias = tiny(bias=True)
    c = with_bias.config
    # per layer: ln_1, c_attn (3C), attn.c_proj, ln_2, c_fc (4C), mlp.c_proj; then ln_f
    biases = c.n_layer * (c.n_embd + 3 * c.n_embd + c.n_embd + c.n_embd + 4 * c.n_embd + c.n_embd)
    assert with_bias.num_params() - model.num_params() == biases + c.n_embd


def test_lm_head_and_token_embedding_share_one_tensor():
    model = tiny(torch.float32)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert sum(1 for _ in model.parameters()) == len(model.state_dict()) - 1
    _, loss = model(random_ids(2, 8), targets=random_ids(2, 8, seed=5))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_initialisation_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=256, vocab_size=512))
    params = dict(model.named_parameters())
    scaled = 0.02 / math.sqrt(2 * 8)
    for name, param in params.items():
        if name.endswith("c_proj.weight"):
            assert param.std().item() == pytest.approx(scaled, rel=0.05), name
        elif name.endswith("weight") and param.dim() == 2:
            assert param.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(param.mean().item()) < 0.002, name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
        else:  # LayerNorm gains
            assert torch.all(param == 1), name


def test_dropout_is_active_only_in_training_mode():
    model = tiny(torch.float32, dropout=0.5)
    idx = random_ids(2, 10)
    a, _ = model(idx)
    b, _ = model(idx)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(1)
    c, _ = model(idx)
    d, _ = model(idx)
    assert not torch.allclose(c, d)
    assert not torch.allclose(a, c)
    model.eval()
    torch.testing.assert_close(model(idx)[0], a)
    torch.testing.assert_close(tiny(torch.float32, dropout=0.0)(idx)[0], a)


def test_loss_is_mean_cross_entropy_over_unmasked_targets():
    model = tiny()
    idx, targets = random_ids(2, 12), random_ids(2, 12, seed=9)
    logits, loss = model(idx, targets)
    manual = -F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, manual)
    masked = targets.clone()
    masked[0, :5] = -100
    masked[1, 10:] = -100
    _, loss = model(idx, masked)
    keep = masked != -100
    nll = -F.log_softmax(logits, dim=-1)[keep].gather(-1, targets[keep][:, None])
    torch.testing.assert_close(loss, nll.mean())


def test_loss_is_fp32_under_autocast():
    model = tiny(torch.float32)
    idx = random_ids(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets=idx)
    assert logits.dtype == torch.bfloat16
    assert loss is not None and loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()))


def test_flops_per_token_formula():
    model = tiny()
    c = model.config
    n = model.num_params(non_embedding=True)
    assert n == model.num_params() - c.block_size * c.n_embd
    training = 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
    assert model.flops_per_token() == training
    assert model.flops_per_token(training=False) * 3 == training


def test_input_longer_than_block_size_is_an_error():
    model = tiny()
    with pytest.raises(GptkitError, match="25 tokens exceeds model.block_size"):
        model(random_ids(1, 25))
    cache = model.new_kv_cache(1)
    model(random_ids(1, 20), kv_cache=cache)
    with pytest.raises(GptkitError, match="block_size"):
        model(random_ids(1, 5), kv_cache=cache)
    assert cache.length == 20
    model(random_ids(1, 4), kv_cache=cache)  # exactly block_size is fine
    with pytest.raises(GptkitError, match="shape"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_vocab_size_comes_from_the_tokenizer_unless_padded():
    config = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8)
    with pytest.raises(GptkitError, match="vocab_size"):
        GPT(config)
    assert GPT.from_config(config, 65).config.vocab_size == 65
    assert config.vocab_size is None  # the caller's config is not modified
    padded = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=128)
    assert GPT.from_config(padded, 65).lm_head.out_features == 128
    with pytest.raises(GptkitError, match="smaller than the tokenizer"):
        GPT.from_config(padded, 129)


# --- attention weights (viz.capture.attention_weights, Hugging Face's output_attentions) ---


def test_attention_weights_are_causal_probabilities():
    model = tiny(torch.float32)
    weights = attention_weights(model, random_ids(3, 20))
    assert weights.shape == (2, 3, 2, 20, 20) and weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 2, 20), atol=1e-6, rtol=0)
    future = torch.ones(20, 20, dtype=torch.bool).triu(1)
    assert (weights[..., future] == 0).all()  # exactly 0, not merely small
    assert (weights[..., ~future] > 0).all()
    with pytest.raises(GptkitError, match="exceeds model.block_size"):
        attention_weights(model, random_ids(1, 25))


def test_explicit_attention_gives_the_same_model_output_as_sdpa():
    model = tiny(torch.float32)
    idx = random_ids(2, 24)
    fused = model.transformer(idx)
    with capture_attention() as found:
        explicit = model.transformer(idx)
    assert len(found) == 2
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    logits, loss = model(idx)  # the ordinary forward is unchanged
    assert loss is None and logits.shape == (2, 24, VOCAB)


def test_attention_weights_reproduce_the_attention_output():
    """weights @ v, heads merged, then c_proj is exactly what the attention layer outputs."""
    model = tiny(torch.float32)
    idx = random_ids(2, 24)
    weights = attention_weights(model, idx)
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(24))
    for layer, block in enumerate(model.transformer.h):
        h = block.ln_1(x)
        _, _, v = block.attn.c_attn(h).split(16, dim=2)
        v = v.view(2, 24, 2, 8).transpose(1, 2)  # (B, n_head, T, head_dim)
        y = (weights[layer] @ v).transpose(1, 2).reshape(2, 24, 16)
        attn_out = block.attn(h)  # the fused SDPA path
        torch.testing.assert_close(block.attn.c_proj(y), attn_out, atol=1e-5, rtol=0)
        x = block(x)


def test_attention_weights_with_padding_hide_padded_keys():
    model = tiny(torch.float32)
    ids = random_ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0  # row 0 is left-padded by 3
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    weights = attention_weights(model, ids, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 2, 10), atol=1e-6, rtol=0)
    assert (weights[:, 0, :, 3:, :3] == 0).all()  # real tokens never see the padding
    assert (weights[..., torch.ones(10, 10, dtype=torch.bool).triu(1)] == 0).all()
    alone = attention_weights(model, ids[:1, 3:])  # the same text without padding
    torch.testing.assert_close(weights[:, 0, :, 3:, 3:], alone[:, 0], atol=1e-6, rtol=0)
    fused = model.transformer(ids, attention_mask=mask, position_ids=positions)
    with capture_attention():
        explicit = model.transformer(ids, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(explicit[0, 3:], fused[0, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit[1], fused[1], atol=1e-5, rtol=0)


def test_attention_weights_in_fp64_and_after_a_kv_cache():
    model = tiny()  # float64: the weights are computed in float64 too
    idx = random_ids(1, 12)
    weights = attention_weights(model, idx)
    assert weights.dtype == torch.float64
    with capture_attention():
        explicit = model.transformer(idx)
    torch.testing.assert_close(explicit, model.transformer(idx))
    cache = model.new_kv_cache(1)
    model(idx[:, :8], kv_cache=cache)
    with capture_attention() as found:
        model.transformer(idx[:, 8:], kv_cache=cache)
    torch.testing.assert_close(found[0], weights[0, :, :, 8:])  # new queries, all 12 keys


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing the blocks in backward replays their dropout masks: nothing changes."""
    config = ModelConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50,
                         dropout=0.1)
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GPT(config).train()
        model.transformer.activation_checkpointing = recompute
        saved: list[int] = []  # what autograd keeps for the backward pass, in elements

        def keep(tensor: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()},
                        sum(saved)))
    (loss_a, grads_a, kept_a), (loss_b, grads_b, kept_b) = results
    assert kept_b < kept_a / 2  # only the blocks' inputs are kept
    assert torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-7, msg=name)
    assert any(grad.abs().sum() > 0 for grad in grads_a.values())
