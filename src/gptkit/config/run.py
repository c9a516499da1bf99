"""`RunConfig`, all of a run's settings, and `build_config`, which turns a nested dict into one.

Unknown keys are refused before pydantic sees them, with the closest valid name suggested
("did you mean 'lr'?"); pydantic then converts and checks every value, and the checks that
read two sections run last (`RunConfig._across`). The result is frozen: `updated` builds a
changed, re-validated copy.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from gptkit.config.data import DataConfig, split_checks
from gptkit.config.fields import (
    Bool,
    BoolOrStr,
    Float,
    Int,
    Nullable,
    Settings,
    Str,
    StrList,
    as_list,
    settings_error,
)
from gptkit.config.sections import (
    ClassifyConfig,
    DistConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    LogConfig,
    ModelConfig,
    TrainConfig,
)
from gptkit.errors import GptkitError, check_all
from gptkit.generation.config import GenerationConfig


def _typed(hint: Any) -> Any:
    """The value type of `fields.py` for a plain annotation of GenerationConfig."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind = BoolOrStr if set(inner) == {bool, str} else _typed(inner[0])
        nullable: Any = Nullable  # subscripted with a type known only at run time
        return nullable[kind] if type(None) in args else kind
    if origin is list:
        return StrList
    return {int: Int, float: Float, bool: Bool, str: Str}[hint]


_LIST = BeforeValidator(as_list)
# GenerationConfig's fields with the value types of the other sections, so `sample:` converts
# recipe and --set values exactly as they do (1e2 is 100, on is true, inf is refused) before
# GenerationConfig's own rules check them
_SAMPLE_TYPES = {name: _typed(hint)
                 for name, hint in typing.get_type_hints(GenerationConfig).items()
                 if name not in ("bad_words_ids", "logit_bias")}
_nullable: Any = Nullable  # subscripted below: a generic alias mypy cannot apply
_SAMPLE_TYPES["bad_words_ids"] = _nullable[Annotated[list[Annotated[list[Int], _LIST]], _LIST]]
_SAMPLE_TYPES["logit_bias"] = _nullable[dict[Int, Float]]
_SampleValues = create_model(  # type: ignore[call-overload]
    "SampleValues", __config__=ConfigDict(extra="allow"),
    **{name: (kind, None) for name, kind in _SAMPLE_TYPES.items()},
)


class RunConfig(Settings):
    """Every setting of a run, as saved resolved in its config.yaml."""

    name: Str = "shakespeare-char"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sample: GenerationConfig = Field(default_factory=GenerationConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("sample", mode="before")
    @classmethod
    def _sample_values(cls, value: Any) -> Any:
        """A `sample:` mapping, converted as every setting is, then checked by
        GenerationConfig's own rules (named sample.*); unknown names are refused there."""
        if not isinstance(value, dict):
            return value
        try:
            typed = _SampleValues(**value)
        except ValidationError as exc:
            raise settings_error(exc, ("sample",)) from None
        converted = {k: v for k, v in typed.model_dump().items() if k in value}
        return GenerationConfig.parse({**value, **converted}, prefix="sample.")

    @model_validator(mode="after")
    def _across(self) -> RunConfig:
        """The checks that read more than one section."""
        m, t, e, f, c = self.model, self.train, self.eval, self.finetune, self.classify
        check_all([
            (c.chunk_stride is None or c.chunk_stride < m.block_size,
             f"classify.chunk_stride ({c.chunk_stride}) is the overlap of chunks of "
             f"model.block_size ({m.block_size}) tokens and must be smaller; lower it"),
            (t.optimizer != "muon" or f.lora_r == 0,
             "train.optimizer=muon does not train LoRA adapters (finetune.lora_r > 0): Muon "
             "is for full hidden weight matrices; use train.optimizer=adamw"),
            (t.seq_warmup_steps == 0 or t.seq_warmup_start < m.block_size,
             f"train.seq_warmup_start ({t.seq_warmup_start}) must be below model.block_size "
             f"({m.block_size}): windows grow from it to block_size"),
            (e.stride is None or e.stride <= m.block_size,
             f"eval.stride ({e.stride}) must not exceed model.block_size ({m.block_size})"),
            (0 <= f.freeze_layers <= m.n_layer,
             f"finetune.freeze_layers must be in [0, model.n_layer={m.n_layer}] "
             f"(got {f.freeze_layers})"),
            *split_checks(self.data),
        ])
        return self

    def updated(self, **changes: Any) -> RunConfig:
        """A validated copy; each change is a whole section (or `name`), or a dict of some of
        a section's fields: `cfg.updated(model={"vocab_size": 65})`."""
        values = self.model_dump()
        for key, change in changes.items():
            if isinstance(change, dict):
                values[key] = {**values[key], **change}
            elif isinstance(change, BaseModel):
                values[key] = change  # already validated
            else:
                values[key] = change
        return RunConfig(**values)


SECTIONS: dict[str, type] = {
    name: typing.get_type_hints(RunConfig)[name] for name in RunConfig.model_fields
    if name != "name"
}
TOP_LEVEL = ("name",)


def field_names(section: type) -> list[str]:
    """The settings of a section class (each is a pydantic model)."""
    return list(typing.cast(type[BaseModel], section).model_fields)


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_key(section: str | None, key: Any) -> None:
    """Refuse a key that is no setting (of `section`, or at the top level), suggesting one."""
    if not isinstance(key, str):  # e.g. `1: 2` in a YAML file
        where = f" in section {section!r}" if section else ""
        raise GptkitError(f"setting names must be text; {key!r}{where} is not")
    if section is None:
        valid = list(SECTIONS) + list(TOP_LEVEL)
        if key not in valid:
            raise GptkitError(
                f"unknown setting {key!r}{_suggest(key, valid)}; "
                f"sections are: {', '.join(valid)}"
            )
        return
    names = field_names(SECTIONS[section])
    if key not in names:
        raise GptkitError(
            f"unknown setting '{section}.{key}'{_suggest(key, names)}; "
            f"valid keys in {section!r}: {', '.join(names)}"
        )


def build_config(raw: dict[str, Any]) -> RunConfig:
    """Type-check a raw nested dict (a recipe with overrides, a saved config.yaml) and turn it
    into a validated RunConfig; the first problem is a one-line GptkitError naming the key."""
    values = dict(raw)
    for key, value in raw.items():
        check_key(None, key)
        if key not in SECTIONS:
            continue
        if value is None:
            values[key] = {}
        elif not isinstance(value, dict):
            raise GptkitError(f"section {key!r} must be a mapping, got {value!r}")
        for name in values[key]:
            check_key(key, name)
    return RunConfig(**values)
