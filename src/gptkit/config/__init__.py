"""Typed run settings: pydantic sections, YAML recipes and dotted command-line overrides.

A run is described by one frozen `RunConfig`. It starts from a recipe (a YAML file shipped in
`gptkit/recipes/` or given by path), gets `--set section.key=value` overrides, is validated
once (every check beside the field it checks) and is saved resolved into the run directory
as `config.yaml`. Each named choice is a `Literal` of `choices.py`.

Modules: `choices` (the choices), `fields` (value types, rules, errors), `sections` and
`data` (the sections), `sample` (the `sample:` section), `run` (RunConfig, build_config),
`recipes` (recipes, overrides, init_from), `files` (config.yaml), `usage` (which runs read
which setting).
"""

from gptkit.config.data import SPLIT_PROTOCOLS, DataConfig
from gptkit.config.files import read_config, read_raw_config, save_config
from gptkit.config.recipes import (
    apply_overrides,
    inherit_init_model,
    load_config,
    load_recipe,
    recipe_names,
)
from gptkit.config.run import SECTIONS, TOP_LEVEL, RunConfig, build_config, field_names
from gptkit.config.sections import (
    MODEL_PRESETS,
    SHAPE_KEYS,
    ClassifyConfig,
    DistConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    LogConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "MODEL_PRESETS", "SECTIONS", "SHAPE_KEYS", "SPLIT_PROTOCOLS", "TOP_LEVEL", "ClassifyConfig",
    "DataConfig", "DistConfig", "DistillConfig", "EvalConfig", "FinetuneConfig", "LogConfig",
    "ModelConfig", "RunConfig", "TrainConfig", "apply_overrides", "build_config",
    "field_names", "inherit_init_model", "load_config", "load_recipe", "read_config",
    "read_raw_config", "recipe_names", "save_config",
]
