"""best/README.md: the model card every save of best/ writes, and export carries."""

from __future__ import annotations

import json

from gptkit.config import read_config
from gptkit.model_card import hub_card, render, run_card
from gptkit.run import load_run


def test_the_card_states_data_tokenizer_size_budget_and_metrics(tiny_run):
    card = (tiny_run / "best" / "README.md").read_text()
    best = json.loads((tiny_run / "best" / "config.json").read_text())
    data = json.loads((tiny_run / "data.json").read_text())
    model = load_run(tiny_run).model
    assert card.startswith("# shakespeare-char\n") and "trained from scratch" in card
    assert f"| parameters | {model.num_params():,} " in card
    assert "| source | `tinyshakespeare` |" in card and "| tokenizer | char |" in card
    assert f"{data['splits']['train']['tokens']:,} tokens" in card
    assert f"| steps | {best['step']:,} (of train.max_steps = 20) |" in card
    assert f"| tokens seen | {best['tokens_seen']:,} " in card
    assert f"| loss (nats/token) | {best['val_loss']:.4f} |" in card
    assert f"| perplexity | {best['metrics']['val_perplexity']:.2f} |" in card
    assert "training time" in card and "## Limitations" in card


def test_the_saved_card_is_what_the_run_files_render(tiny_run):
    read = lambda name: json.loads((tiny_run / name).read_text())  # noqa: E731
    rendered = render(read_config(tiny_run / "config.yaml"), read("best/config.json"),
                      read("data.json"), read("environment.json"))
    assert rendered == (tiny_run / "best" / "README.md").read_text() == run_card(tiny_run)


def test_the_hub_card_is_the_same_card_under_a_metadata_header(tiny_run):
    hub = hub_card(tiny_run)
    header, body = hub.split("---\n", 2)[1:]
    assert "library_name: transformers" in header and "- gptkit" in header
    assert body.lstrip("\n") == run_card(tiny_run)


def test_the_card_names_the_architecture_options(tiny_run):
    cfg = read_config(tiny_run / "config.yaml")
    best = json.loads((tiny_run / "best" / "config.json").read_text())
    assert "A GPT-2-architecture language model" in render(cfg, best)
    cfg = cfg.updated(model={"pos_embedding": "rope", "mlp": "relu2"})
    card = render(cfg, best)
    assert "A GPT-2-style language model (rotary positions, ReLU² MLP), trained" in card
    model = load_run(tiny_run).model  # with RoPE there is no position table to leave out
    assert f"| parameters | {model.num_params() - 32 * 32:,} ({model.num_params() - 32 * 32:,} " \
        "without position embeddings) |" in card
