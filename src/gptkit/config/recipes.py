"""Recipes (YAML files of settings, shipped or by path), `--set` overrides, and `init_from`.

A run's settings are built once, here: the recipe, then the overrides, then (with
`train.init_from`) the model shape and tokenizer of the run it starts from; `build_config`
validates the result into the RunConfig that is saved as the run's config.yaml.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gptkit.config.context import resized_model_config
from gptkit.config.files import CONFIG_FILE, read_config
from gptkit.config.run import SECTIONS, RunConfig, build_config, check_key
from gptkit.config.sections import MODEL_PRESETS, SHAPE_KEYS, ModelConfig, TrainConfig
from gptkit.errors import GptkitError


def recipe_names() -> list[str]:
    """Names of the recipes shipped with gptkit."""
    folder = resources.files("gptkit") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(recipe: str) -> dict[str, Any]:
    """A shipped recipe by name, or a YAML file by path, as a raw nested dict."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise GptkitError(f"recipe file {recipe!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GptkitError(f"recipe {recipe!r} is not UTF-8 text (byte {exc.start}); save "
                              "it as UTF-8") from None
    else:
        resource = resources.files("gptkit") / "recipes" / f"{recipe}.yaml"
        if not resource.is_file():
            names = ", ".join(recipe_names())
            raise GptkitError(f"unknown recipe {recipe!r}; choose one of: {names}, or a .yaml path")
        text = resource.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise GptkitError(f"recipe {recipe!r} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise GptkitError(
            f"recipe {recipe!r} must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw recipe dict (values stay strings here)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise GptkitError(f"--set needs key=value, got {item!r} (e.g. --set train.lr=3e-4)")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) == 1:
            check_key(None, parts[0])
            if parts[0] in SECTIONS:
                raise GptkitError(f"--set {dotted} names a section; set one key, e.g. {dotted}.KEY")
            out[parts[0]] = value
            continue
        if len(parts) != 2:
            raise GptkitError(f"--set key {dotted!r} must look like section.key (e.g. train.lr)")
        section, key = parts
        check_key(None, section)
        if section not in SECTIONS:
            raise GptkitError(f"{section!r} is not a section; sections are: {', '.join(SECTIONS)}")
        check_key(section, key)
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise GptkitError(f"recipe section {section!r} must be a mapping")
        out[section][key] = value
    return out


def load_config(recipe: str = "shakespeare-char", overrides: list[str] | None = None) -> RunConfig:
    """Recipe plus overrides, type-checked and validated."""
    return build_config(inherit_init_model(load_recipe(recipe), overrides or []))


def inherit_init_model(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Recipe plus overrides; with `train.init_from`, the model and tokenizer are that run's.

    A run started from another keeps its shape: only `model.dropout` may change, and
    `model.block_size` (a cropped or extended context, `model.context_extension`). Model keys
    of a recipe that does not itself name `init_from` are about a fresh model and give way;
    shape keys set next to `init_from` (in that recipe, or by --set) must agree with the run.
    Without the run's config.yaml nothing changes here (the trainer reports the missing run).
    """
    raw = apply_overrides(recipe, overrides)
    train = raw.get("train")
    init_from = TrainConfig(init_from=train.get("init_from")).init_from if isinstance(
        train, dict) else None
    if not init_from or not (Path(init_from) / CONFIG_FILE).is_file():
        return raw
    base = read_config(Path(init_from) / CONFIG_FILE)
    explicit: dict[str, Any] = {}
    recipe_train, recipe_model = recipe.get("train"), recipe.get("model")
    if isinstance(recipe_train, dict) and recipe_train.get("init_from") is not None and isinstance(
            recipe_model, dict):
        explicit.update(recipe_model)
    model_sets = [o for o in overrides if o.split("=", 1)[0].strip().startswith("model.")]
    explicit.update(apply_overrides({}, model_sets).get("model", {}))
    for key in explicit:
        check_key("model", key)
    given = ModelConfig(**explicit)
    keys = set(explicit) | set(MODEL_PRESETS.get(given.preset or "", {}))
    resize = "block_size" in explicit  # cropped or extended (gptkit.config.context)
    for key in SHAPE_KEYS:
        mine, theirs = getattr(given, key), getattr(base.model, key)
        if key in keys and mine != theirs and not (key == "vocab_size" and mine is None) \
                and not (key == "block_size" and resize):
            raise GptkitError(
                f"model.{key}={mine} conflicts with train.init_from={init_from}, whose model has "
                f"{key}={theirs}; a run started from another keeps its shape (only "
                "model.dropout and model.block_size may change): drop that setting"
            )
    new_size = given.block_size if resize else base.model.block_size
    method = given.context_extension if "context_extension" in explicit else None
    resized = resized_model_config(base.model, new_size, method, f"train.init_from={init_from}")
    model = {**resized.model_dump(), "preset": None}
    if "dropout" in explicit:
        model["dropout"] = given.dropout
    tokenizer = {k: getattr(base.data, k) for k in ("tokenizer", "vocab_size", "tokenizer_path")}
    return {**raw, "model": model, "data": {**(raw.get("data") or {}), **tokenizer}}


