"""Smaller models for inference: int8 dynamic quantization, and pruning to a chosen sparsity.

**Quantization** (`quantize_int8`) is PyTorch's dynamic int8 quantization of every
`nn.Linear` (`torch.ao.quantization.quantize_dynamic`, per-output-channel symmetric int8
weights; activations are quantized per batch on the fly): CPU only (the x86 / fbgemm and
qnnpack kernels), no calibration data needed. Embeddings and norms stay fp32. On one core
here it decodes 2 to 3 times faster than fp32 at GPT-2 shapes (a 4,096- or 50,257-token
vocabulary, 256 to 384 wide); on a tiny model (the char-level recipe) quantizing the
activations costs what the small matrix products save. torchao, the maintained successor
of `torch.ao`, was measured too: its int8 layers run 2 to 9 times slower than these in
eager mode on a CPU and still slower after a 50 s `torch.compile` (docs/design.md, int8).

The LM head is a linear layer, so it is quantized too; it shares its matrix with the token
embedding, which cannot take int8 weights. The tie is kept *in value*: the embedding becomes
the dequantized int8 matrix, so both still hold the same numbers, and a saved int8 model
stores that matrix once (as int8 + one scale per token). A model with its own LM head
(`model.tie_embeddings: false`) keeps its embedding as it was.

A saved int8 model (`gptkit.ops.export_int8`) is an ordinary run folder whose
`best/config.json` says `"quantization": "int8"` and whose `best/model.safetensors` holds,
per linear layer, `<name>.weight` (int8), `<name>.weight_scale` (float64, one per output
row), `<name>.weight_zero_point` (int64, all 0: symmetric) and `<name>.bias` (fp32); the
names follow the compressed-tensors convention. `load_run` rebuilds the quantized model from
it, bit for bit what `quantize_int8` gave.

**Pruning** zeroes weights through `torch.nn.utils.prune` and then makes it permanent
(`prune.remove`): the result is a plain `GPT` with the same state-dict keys, so every
command reads it. Only the transformer blocks' linear layers are pruned (attention `c_attn`,
`c_proj`; MLP `c_fc`, `c_proj`); embeddings, the LM head and norms are kept.

- `prune_magnitude`: unstructured, the smallest-magnitude weights (L1) of each layer, the
  same fraction in every layer (`prune.l1_unstructured`). One global threshold
  (`prune.global_unstructured`) was measured too: at 50% it was 0.04 nats better on the
  char-level Shakespeare model but 0.03 worse on the WikiText-2 one, where it cut 88% of
  the first attention output projection (GPT-2's initialisation makes the residual
  projections smaller); per layer, no layer is stripped and the sparsity is what was asked.
- `prune_heads`: whole attention heads (the head's query, key and value rows of `c_attn`,
  their biases, and the matching input columns of `attn.c_proj`).
- `prune_mlp`: whole MLP hidden channels (the channel's rows of `c_fc` and their biases, two
  rows for SwiGLU, and the matching input column of `mlp.c_proj`).

Structured pruning ranks the heads (channels) of all layers together by the L2 norm of all
their weights (the group norm of torch-pruning), and zeroes the lowest `round(amount x
count)`. Amounts are targets: what is already zero has the smallest magnitude (norm) and
is counted first, so pruning a pruned model again to the same amount changes nothing.
That norm beat random choice clearly for heads; for MLP channels of the
WikiText-2 model it did not (a weight norm is a weak proxy there; activation-aware scores
need calibration data). Zeros in dense matrices are no faster for dense kernels: the gain
is what a sparse format or a slimmer model built from the mask would give, and int8
quantization is what speeds up CPU inference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils import prune

from gptkit.config.choices import PruneMethod, names
from gptkit.errors import GptkitError
from gptkit.model import GPT, Block
from gptkit.rundir import INT8, QUANTIZATIONS

PRUNE_METHODS = names(PruneMethod)
_METADATA_KEY = "gptkit_quantization"  # in the safetensors header


# --- int8 dynamic quantization ----------------------------------------------------------------
@contextmanager
def _quiet_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation notices for the calls inside.

    PyTorch (2.10 on) marks `torch.ao.quantization` and quantized tensors deprecated in favour
    of torchao, but torchao's int8 linear layers are slower than fp32 on a CPU without
    `torch.compile` (measured: docs/design.md, int8), so gptkit keeps PyTorch's own CPU kernels
    until torchao's eager CPU path catches up; users should not see a warning they cannot act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        yield


def _quantized_linear() -> type[nn.Module]:
    with _quiet_ao():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    return DynamicQuantizedLinear


def is_int8(model: nn.Module) -> bool:
    """Whether `model` holds dynamically quantized int8 linear layers."""
    kind = _quantized_linear()
    return any(isinstance(m, kind) for m in model.modules())


def _check_int8_backend(model: nn.Module) -> None:
    if torch.backends.quantized.engine == "none" or not torch.backends.quantized.supported_engines:
        raise GptkitError(
            "this PyTorch build has no quantized CPU kernels (torch.backends.quantized.engine "
            "is 'none'); use an official x86 or ARM build of torch, or drop --quantize"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise GptkitError(
            f"int8 dynamic quantization runs on the CPU, but the model is on "
            f"{', '.join(sorted(devices - {'cpu'}))}; load it with device='cpu' (--device cpu)"
        )


def _is_tied(model: GPT) -> bool:
    return model.lm_head.weight is model.transformer.wte.weight


def quantize_int8(model: GPT) -> GPT:
    """A copy of `model` with int8 linear layers (the LM head included), for CPU inference.

    `model` is left as it was. The copy is in eval mode; the token embedding of a tied model
    becomes the dequantized int8 head matrix (module docstring). Quantizing a model that is
    already int8 returns it unchanged.
    """
    if is_int8(model):
        return model
    _check_int8_backend(model)
    tied = _is_tied(model)
    with _quiet_ao():
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantized = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8, inplace=False)
        if tied:
            with torch.no_grad():
                quantized.transformer.wte.weight.copy_(quantized.lm_head.weight().dequantize())
    return quantized.eval()


def _int8_layers(model: nn.Module) -> dict[str, nn.Module]:
    kind = _quantized_linear()
    return {name: m for name, m in model.named_modules() if isinstance(m, kind)}


def save_int8(model: GPT, path: str | Path) -> None:
    """An int8 model (from `quantize_int8`) as safetensors; see the module docstring."""
    layers = _int8_layers(model)
    if not layers:
        raise GptkitError("save_int8 needs a quantized model; call quantize_int8(model) first")
    tensors: dict[str, Tensor] = {}
    with _quiet_ao():
        for name, layer in layers.items():
            weight, bias = layer.weight(), layer.bias()  # type: ignore[operator]
            if weight.qscheme() != torch.per_channel_affine:
                raise GptkitError(f"{name} is not quantized per channel; use quantize_int8")
            tensors[f"{name}.weight"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales().contiguous()
            tensors[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
    tied = getattr(model.config, "tie_embeddings", True)
    for name, tensor in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items():
        if tied and name == "transformer.wte.weight":  # the LM head's int8 matrix, dequantized
            continue
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"format": "pt", _METADATA_KEY: INT8})


def load_int8(model: GPT, path: str | Path) -> GPT:
    """The int8 model saved at `path`, built on `model` (a GPT of the same config, fp32 CPU)."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptkitError(f"cannot read weights {path} ({exc}); the file is damaged") from exc
    quantized = quantize_int8(model)
    layers = _int8_layers(quantized)
    with _quiet_ao():
        for name, layer in layers.items():
            try:
                ints, scale = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.weight_scale")
                zero = tensors.pop(f"{name}.weight_zero_point")
            except KeyError:
                raise GptkitError(f"{path} lacks the int8 weights of {name}; is it an int8 "
                                  "export (gptkit export --quantize int8)?") from None
            expected = layer.weight()  # type: ignore[operator]
            if ints.shape != expected.shape or ints.dtype != torch.int8:
                raise GptkitError(
                    f"{path}: {name}.weight is {ints.dtype} {tuple(ints.shape)} but the model "
                    f"expects int8 {tuple(expected.shape)}; the config does not match"
                )
            # exact: every int8 value times its scale rounds back to itself
            weight = torch.quantize_per_channel(ints.float() * scale[:, None].float(), scale,
                                                zero, 0, torch.qint8)
            layer.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))  # type: ignore[operator]
    plain = {**dict(quantized.named_parameters()), **dict(quantized.named_buffers())}
    tied = _is_tied(model)
    unexpected = sorted(set(tensors) - set(plain))
    missing = sorted(set(plain) - set(tensors) - ({"transformer.wte.weight"} if tied else set()))
    if unexpected or missing:
        which = (f"weights this model does not have: {', '.join(unexpected[:5])}" if unexpected
                 else f"no weights for: {', '.join(missing[:5])}")
        raise GptkitError(f"{path} holds {which}; the config does not match these weights")
    for name, tensor in tensors.items():
        if tensor.shape != plain[name].shape:
            raise GptkitError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model "
                              f"expects {tuple(plain[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            plain[name].copy_(tensor)
    if tied:
        with torch.no_grad(), _quiet_ao():
            quantized.transformer.wte.weight.copy_(
                quantized.lm_head.weight().dequantize())  # type: ignore[operator]
    return quantized.eval()


def check_quantize(value: str | None) -> None:
    if value is not None and value not in QUANTIZATIONS:
        raise GptkitError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {value!r}")


# --- pruning ----------------------------------------------------------------------------------
def check_amount(amount: float, what: str = "amount") -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise GptkitError(
            f"{what} must be a fraction strictly between 0 and 1 (e.g. 0.3 = prune 30%), "
            f"got {amount!r}"
        )
    return float(amount)


def _check_prunable(model: GPT) -> None:
    if is_int8(model):
        raise GptkitError("cannot prune an int8 model; prune the fp32 run, then quantize it")


def _blocks(model: GPT) -> list[Block]:
    return [cast(Block, block) for block in model.transformer.h]


def _block_linears(model: GPT) -> list[tuple[str, nn.Linear]]:
    """The transformer blocks' linear layers, the ones pruning touches."""
    found = []
    for i, block in enumerate(_blocks(model)):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            module = block.get_submodule(name)
            if isinstance(module, nn.Linear):
                found.append((f"transformer.h.{i}.{name}", module))
    return found


def _make_permanent(modules: list[nn.Module]) -> None:
    """Fold every pruning mask into its tensor: no weight_orig / weight_mask remain."""
    for module in modules:
        for name in ("weight", "bias"):
            if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
                prune.remove(module, name)


def prune_magnitude(model: GPT, sparsity: float) -> dict[str, Any]:
    """Zero the `sparsity` share of smallest-magnitude weights in every block linear layer.

    L1 unstructured pruning layer by layer (`prune.l1_unstructured`), made permanent. Returns
    the achieved sparsity (`sparsity(model)`).
    """
    sparsity = check_amount(sparsity, "sparsity")
    _check_prunable(model)
    layers: list[nn.Module] = [module for _, module in _block_linears(model)]
    for module in layers:
        prune.l1_unstructured(module, "weight", amount=sparsity)
    _make_permanent(layers)
    return _report(model)


def _count(fraction: float, total: int, unit: str) -> int:
    k = round(fraction * total)
    if k < 1:
        raise GptkitError(
            f"amount {fraction:g} of {total} {unit} prunes none; use at least "
            f"{0.5 / total:.3g}"
        )
    if k >= total:
        raise GptkitError(f"amount {fraction:g} would prune all {total} {unit}; use less")
    return k


def _head_slices(model: GPT) -> tuple[int, int]:
    n_head = model.config.n_head
    return n_head, model.config.n_embd // n_head


def _head_importance(model: GPT) -> Tensor:
    """(n_layer, n_head): L2 norm of each head's weights (q, k, v rows and biases of c_attn,
    input columns of attn.c_proj)."""
    n_head, hd = _head_slices(model)
    c = model.config.n_embd
    scores = []
    for block in _blocks(model):
        attn = block.attn
        squares = attn.c_attn.weight.float().view(3, n_head, hd, c).pow(2).sum(dim=(0, 2, 3))
        if attn.c_attn.bias is not None:
            squares += attn.c_attn.bias.float().view(3, n_head, hd).pow(2).sum(dim=(0, 2))
        squares += attn.c_proj.weight.float().view(c, n_head, hd).pow(2).sum(dim=(0, 2))
        scores.append(squares.sqrt())
    return torch.stack(scores)


def _mlp_importance(model: GPT) -> Tensor:
    """(n_layer, hidden): L2 norm of each channel's weights (c_fc rows and biases, the
    c_proj input column)."""
    scores = []
    for block in _blocks(model):
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        hidden = proj.in_features
        # one row per channel, two for SwiGLU (gate, up)
        squares = fc.weight.float().view(-1, hidden, fc.in_features).pow(2).sum(dim=(0, 2))
        if fc.bias is not None:
            squares += fc.bias.float().view(-1, hidden).pow(2).sum(dim=0)
        squares += proj.weight.float().pow(2).sum(dim=0)
        scores.append(squares.sqrt())
    return torch.stack(scores)


def _lowest(scores: Tensor, k: int) -> Tensor:
    """A bool mask (same shape) of the k lowest scores over all layers together."""
    flat = scores.flatten()
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:k]] = True
    return chosen.view_as(scores)


def _apply_mask(module: nn.Module, name: str, keep: Tensor) -> None:
    """Zero `module.name` where `keep` is False through torch's pruning (custom mask)."""
    if getattr(module, name, None) is not None:
        prune.custom_from_mask(module, name, keep.to(getattr(module, name).dtype))


def prune_heads(model: GPT, fraction: float) -> dict[str, Any]:
    """Zero the `fraction` of attention heads (over all layers) with the lowest importance.

    A head is removed whole: its q, k, v rows and biases in `c_attn` and its input columns in
    `attn.c_proj` (module docstring). Returns the achieved sparsity.
    """
    fraction = check_amount(fraction, "fraction")
    _check_prunable(model)
    n_head, hd = _head_slices(model)
    c = model.config.n_embd
    with torch.no_grad():
        total = n_head * len(model.transformer.h)
        doomed = _lowest(_head_importance(model), _count(fraction, total, "heads"))
    touched: list[nn.Module] = []
    for block, heads in zip(_blocks(model), doomed, strict=True):
        if not heads.any():
            continue
        attn = block.attn
        channels = ~heads.repeat_interleave(hd).to(attn.c_attn.weight.device)  # (C,) keep
        rows = channels.repeat(3)  # q, k, v
        _apply_mask(attn.c_attn, "weight", rows[:, None].expand(3 * c, c))
        _apply_mask(attn.c_attn, "bias", rows)
        _apply_mask(attn.c_proj, "weight", channels[None, :].expand(c, c))
        touched += [attn.c_attn, attn.c_proj]
    _make_permanent(touched)
    return _report(model)


def prune_mlp(model: GPT, fraction: float) -> dict[str, Any]:
    """Zero the `fraction` of MLP hidden channels (over all layers) of lowest importance.

    A channel is removed whole: its `c_fc` rows and biases (gate and up for SwiGLU) and its
    input column in `mlp.c_proj`. Returns the achieved sparsity.
    """
    fraction = check_amount(fraction, "fraction")
    _check_prunable(model)
    with torch.no_grad():
        scores = _mlp_importance(model)
        doomed = _lowest(scores, _count(fraction, scores.numel(), "MLP channels"))
    touched: list[nn.Module] = []
    for block, channels in zip(_blocks(model), doomed, strict=True):
        if not channels.any():
            continue
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        keep = ~channels.to(fc.weight.device)
        rows = keep.repeat(fc.out_features // proj.in_features)
        _apply_mask(fc, "weight", rows[:, None].expand_as(fc.weight))
        _apply_mask(fc, "bias", rows)
        _apply_mask(proj, "weight", keep[None, :].expand_as(proj.weight))
        touched += [fc, proj]
    _make_permanent(touched)
    return _report(model)


# one per PruneMethod
PRUNERS: dict[PruneMethod, Callable[[GPT, float], dict[str, Any]]] = {
    "magnitude": prune_magnitude, "heads": prune_heads, "mlp": prune_mlp,
}


def prune_model(model: GPT, method: str, amount: float) -> dict[str, Any]:
    """Prune in place by `method` (magnitude, heads or mlp); returns the achieved sparsity."""
    if method not in PRUNERS:
        raise GptkitError(f"pruning method must be one of {', '.join(PRUNE_METHODS)}, "
                          f"got {method!r}")
    return PRUNERS[method](model, amount)


def _dense(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a linear layer, float, also when it is int8."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    with _quiet_ao():
        weight, bias = module.weight(), module.bias()  # type: ignore[operator]
    return weight.dequantize(), bias


def sparsity(model: GPT) -> dict[str, Any]:
    """The achieved zero fraction of a (pruned) model, float or int8.

    `blocks`: zeros / weights over the blocks' linear weight matrices (what pruning touches);
    `model`: zeros over every parameter (a tied matrix once); `layers`: per weight matrix;
    `heads` / `mlp_channels`: how many are entirely zero, of how many.
    """
    n_head, hd = _head_slices(model)
    c = model.config.n_embd
    layers: dict[str, float] = {}
    zeros = total = heads_zero = channels_zero = channels = 0
    for i, block in enumerate(_blocks(model)):
        attn_w, attn_b = _dense(block.attn.c_attn)
        aproj_w, _ = _dense(block.attn.c_proj)
        fc_w, fc_b = _dense(block.mlp.c_fc)
        proj_w, _ = _dense(block.mlp.c_proj)
        for name, weight in (("attn.c_attn", attn_w), ("attn.c_proj", aproj_w),
                             ("mlp.c_fc", fc_w), ("mlp.c_proj", proj_w)):
            z = int((weight == 0).sum())
            layers[f"transformer.h.{i}.{name}.weight"] = z / weight.numel()
            zeros, total = zeros + z, total + weight.numel()
        head_zero = (attn_w.view(3, n_head, hd, c) == 0).all(dim=3).all(dim=2).all(dim=0)
        if attn_b is not None:
            head_zero &= (attn_b.view(3, n_head, hd) == 0).all(dim=2).all(dim=0)
        head_zero &= (aproj_w.view(c, n_head, hd) == 0).all(dim=2).all(dim=0)
        heads_zero += int(head_zero.sum())
        hidden = proj_w.size(1)
        channel_zero = (fc_w.view(-1, hidden, c) == 0).all(dim=2).all(dim=0)
        if fc_b is not None:
            channel_zero &= (fc_b.view(-1, hidden) == 0).all(dim=0)
        channel_zero &= (proj_w == 0).all(dim=0)
        channels_zero += int(channel_zero.sum())
        channels += hidden
    all_zeros = all_total = 0
    for _, tensor in _all_weights(model):
        all_zeros += int((tensor == 0).sum())
        all_total += tensor.numel()
    return {
        "blocks": zeros / max(total, 1),
        "blocks_zeros": zeros,
        "blocks_weights": total,
        "model": all_zeros / max(all_total, 1),
        "heads": {"zero": heads_zero, "of": n_head * len(model.transformer.h)},
        "mlp_channels": {"zero": channels_zero, "of": channels},
        "layers": layers,
    }


_report = sparsity  # for functions whose argument is named `sparsity`


def _all_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every parameter (tied ones once), int8 layers dequantized."""
    kind = _quantized_linear()
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, kind):
            weight, bias = _dense(module)
            yield f"{name}.weight", weight
            if bias is not None:
                yield f"{name}.bias", bias
            continue
        for pname, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                yield f"{name}.{pname}", param.detach()
