"""Classifier runs (`gptkit finetune-classify`) <-> Hugging Face `GPT2ForSequenceClassification`
and `GPT2ForTokenClassification`: the head, the labels and the padding settings.

The backbone converts as a language model's does (`gptkit.interop.hf`, which owns the
folders and calls this module); only the head differs:

- token task: gptkit's `score` (weight and bias) is HF's `classifier`; both tag every token.
- sequence task: HF's `score` has no bias. It is folded into the final LayerNorm's bias
  instead: with `W @ delta = b`, `W (h + delta) = W h + b` for every pooled state `h`, and
  the final LayerNorm feeds nothing but the head, so the logits are unchanged (the exported
  `last_hidden_state` is shifted by `delta`). A head whose bias is outside the span of its
  weights (impossible when the labels are fewer than the width and the weights independent)
  is refused. HF pools the rightmost token that is not `pad_token_id`, gptkit the last token
  under the attention mask: the same token for every text that does not end in the pad token
  (`<|endoftext|>`, the GPT-2 convention). gptkit's `mean` pooling has no HF counterpart and
  is refused.

Labels are HF's `id2label` / `label2id` (as text, in gptkit's id order); an import reads them
back as text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gptkit.config.choices import ClassifyTask
from gptkit.errors import GptkitError

ARCHITECTURES: dict[str, ClassifyTask] = {
    "GPT2ForSequenceClassification": "sequence",
    "GPT2ForTokenClassification": "token",
}
HF_ARCHITECTURE: dict[str, str] = {task: name for name, task in ARCHITECTURES.items()}
PIPELINE_TAG = {"sequence": "text-classification", "token": "token-classification"}
LN_F_BIAS = "transformer.ln_f.bias"
# gptkit's head -> HF's, per task
HEAD_KEYS = {"sequence": {"score.weight": "score.weight"},
             "token": {"score.weight": "classifier.weight", "score.bias": "classifier.bias"}}


def task_of(cfg: dict[str, Any]) -> ClassifyTask | None:
    """The classification task an HF `config.json` describes, None for a language model."""
    tasks = {ARCHITECTURES[a] for a in cfg.get("architectures") or [] if a in ARCHITECTURES}
    if len(tasks) > 1:
        raise GptkitError(f"config.json names both {' and '.join(ARCHITECTURES)}; keep one")
    return next(iter(tasks), None)


def check_exportable(task: str, pooling: str) -> None:
    """A classifier transformers can compute: last-token pooling for a sequence task."""
    if task == "sequence" and pooling != "last":
        raise GptkitError(
            f"cannot export a classifier with classify.pooling={pooling}: Hugging Face's "
            "GPT2ForSequenceClassification pools the last token only; train it with "
            "classify.pooling=last"
        )


def classifier_config(lm_config: dict[str, Any], task: str, labels: list[Any],
                      pad_id: int | None) -> dict[str, Any]:
    """config.json of the classifier: the language model's, with its head, labels and pad."""
    names = [str(label) for label in labels]
    config = {**lm_config, "architectures": [HF_ARCHITECTURE[task]],
              "id2label": dict(enumerate(names)),
              "label2id": {name: i for i, name in enumerate(names)},
              "pad_token_id": pad_id}
    if task == "sequence":
        config["problem_type"] = "single_label_classification"  # softmax, as gptkit's scores
    else:
        config["classifier_dropout"] = lm_config["resid_pdrop"]  # gptkit's head dropout
    return config


def fold_bias(weight: Tensor, bias: Tensor) -> Tensor:
    """`delta` with `weight @ delta == bias` (the least one), or a reason it has none."""
    w, b = weight.double(), bias.double()
    delta = torch.linalg.pinv(w) @ b
    if float((w @ delta - b).abs().max()) > 1e-6 * (1.0 + float(b.abs().max())):
        raise GptkitError(
            "cannot export this sequence classifier: transformers' GPT2ForSequenceClassification "
            "has no head bias, and this head's bias cannot be folded into the final LayerNorm "
            f"(its {weight.size(0)} label weight vectors are linearly dependent); train it again"
        )
    return delta


def to_hf_head(state: dict[str, Tensor], task: str) -> dict[str, Tensor]:
    """HF-named backbone weights plus gptkit's `score.*` -> the HF classifier's weights."""
    out = {k: v for k, v in state.items() if not k.startswith("score.")}
    for ours, theirs in HEAD_KEYS[task].items():
        out[theirs] = state[ours].contiguous()
    if task == "sequence":
        delta = fold_bias(state["score.weight"], state["score.bias"])
        ln_f = out[LN_F_BIAS]
        out[LN_F_BIAS] = (ln_f.double() + delta).to(ln_f.dtype)
    return out


def split_hf_head(state: dict[str, Tensor], task: str) -> tuple[dict[str, Tensor],
                                                                 dict[str, Tensor]]:
    """HF classifier weights -> (backbone weights, gptkit's `score.*`; a zero bias for the
    sequence head, which HF does not have)."""
    theirs = {hf: ours for ours, hf in HEAD_KEYS[task].items()}
    head: dict[str, Tensor] = {}
    backbone: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key in theirs:
            head[theirs[key]] = tensor
        else:
            backbone[key] = tensor
    if "score.weight" not in head:
        raise GptkitError(f"the weights have no {next(iter(theirs))}; a "
                          f"{HF_ARCHITECTURE[task]} has one")
    if "score.bias" not in head:
        head["score.bias"] = torch.zeros(head["score.weight"].size(0),
                                         dtype=head["score.weight"].dtype)
    return backbone, head


def labels_from_hf(cfg: dict[str, Any], num_labels: int) -> list[str]:
    """The label of each id (`id2label`; HF's LABEL_i where a folder names none)."""
    id2label = cfg.get("id2label") or {}
    try:
        named = {int(i): str(label) for i, label in id2label.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise GptkitError(f"config.json's id2label is not a map of ids to labels ({exc})") from exc
    labels = [named.get(i, f"LABEL_{i}") for i in range(num_labels)]
    if len(set(labels)) != num_labels:
        raise GptkitError(f"config.json's id2label repeats a label ({labels}); name each once")
    if num_labels < 2:
        raise GptkitError(f"the head has {num_labels} output; a gptkit classifier needs two "
                          "labels or more")
    return labels
