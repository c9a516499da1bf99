"""GenerationConfig: the one generation-settings object (defaults, checks beside the fields,
Hugging Face's names, immutability, the run config's `sample:` section)."""

from __future__ import annotations

import re

import pytest

from gptkit.config import RunConfig, load_config, read_config, save_config
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig


def test_defaults_are_the_sample_sections():
    cfg = GenerationConfig()
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed) == (
        500, 0.8, 200, 1.0, 1337)
    assert (cfg.num_samples, cfg.num_beams, cfg.length_penalty, cfg.early_stopping) == (
        1, 1, 1.0, False)
    assert cfg.stop == [] and cfg.bad_words == [] and cfg.bad_words_ids is None
    assert RunConfig().sample == cfg and cfg.do_sample


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0 (got -1)"),
        ({"temperature": -0.5}, "temperature must be >= 0 (got -0.5)"),
        ({"top_k": 0}, "top_k must be >= 1 (got 0)"),
        ({"top_p": 1.5}, "top_p must be in (0, 1] (got 1.5)"),
        ({"typical_p": 0.0}, "typical_p must be in (0, 1] (got 0.0)"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, 1 = off (got 0.0)"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size must be >= 0, 0 = off (got -2)"),
        ({"stop": ["a", ""]}, "stop must be a list of non-empty strings (got ['a', ''])"),
        ({"bad_words": [""]}, "bad_words must be a list of non-empty strings (got [''])"),
        ({"bad_words_ids": [[]]}, "bad_words_ids must be a list of non-empty lists"),
        ({"num_beams": 0}, "num_beams must be >= 1 (got 0)"),
        ({"num_beams": 2, "num_samples": 3},
         "num_samples (3) must be <= num_beams (2) with beam search"),
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number (got nan)"),
        ({"early_stopping": "sometimes"},
         "early_stopping must be true, false or never (got 'sometimes')"),
        ({"top_k": "many"}, "top_k: Input should be a valid integer"),
        ({"topk": 3}, "unknown generation setting 'topk'"),
    ],
)
def test_each_bad_setting_is_one_line_naming_it(settings, message):
    with pytest.raises(GptkitError, match=re.escape(message)) as caught:
        GenerationConfig(**settings)
    assert "\n" not in str(caught.value)


def test_errors_name_the_setting_as_the_caller_knows_it():
    with pytest.raises(GptkitError, match=re.escape(
            "sample.num_samples (3) must be <= sample.num_beams (2)")):
        GenerationConfig.parse({"num_beams": 2, "num_samples": 3}, prefix="sample.")
    with pytest.raises(GptkitError, match=re.escape("--top_p must be in (0, 1] (got 0.0)")):
        GenerationConfig().replace(prefix="--", top_p=0.0)
    with pytest.raises(GptkitError, match=re.escape("sample.top_k must be >= 1 (got 0)")):
        load_config(overrides=["sample.top_k=0"])


def test_hugging_face_names_mean_the_same_settings():
    hf = GenerationConfig(**{"num_return_sequences": 3, "stop_strings": ["\n"],
                             "do_sample": False, "max_new_tokens": 9})
    assert hf == GenerationConfig(num_samples=3, stop=["\n"], temperature=0.0, max_new_tokens=9)
    assert not hf.do_sample
    assert GenerationConfig(**{"do_sample": True}).temperature == 1.0  # HF's default
    assert GenerationConfig(**{"do_sample": True, "temperature": 0.7}).temperature == 0.7
    with pytest.raises(GptkitError, match="do_sample=True needs temperature > 0"):
        GenerationConfig(**{"do_sample": True, "temperature": 0})
    with pytest.raises(GptkitError, match="num_return_sequences and num_samples are the same"):
        GenerationConfig(**{"num_return_sequences": 2, "num_samples": 2})


def test_settings_are_immutable_and_replace_checks_again():
    cfg = GenerationConfig(top_k=5)
    with pytest.raises(ValueError, match="frozen"):
        cfg.top_k = 6  # type: ignore[misc]
    assert cfg.replace(top_k=6).top_k == 6 and cfg.top_k == 5
    with pytest.raises(GptkitError, match="top_k must be >= 1"):
        cfg.replace(top_k=0)


def test_processor_key_groups_what_can_share_a_batch():
    a = GenerationConfig(temperature=0.9, top_k=5, seed=1, max_new_tokens=3, stop=["x"])
    assert a.processor_key() == a.replace(seed=2, max_new_tokens=9, stop=[],
                                          num_samples=4).processor_key()
    assert a.processor_key() != a.replace(top_k=6).processor_key()
    assert a.processor_key() != a.replace(repetition_penalty=1.2).processor_key()
    greedy = GenerationConfig(temperature=0)
    assert greedy.processor_key() == greedy.replace(top_k=3, top_p=0.5).processor_key()


def test_the_sample_section_round_trips_through_config_yaml(tmp_path):
    cfg = load_config(overrides=["sample.bad_words_ids=[[1, 2], [3]]", "sample.stop=[END]",
                                 "sample.early_stopping=never", "sample.seed=null"])
    assert cfg.sample.bad_words_ids == [[1, 2], [3]] and cfg.sample.seed is None
    save_config(cfg, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml").sample == cfg.sample
    text = (tmp_path / "config.yaml").read_text()
    assert "\nsample:\n  prompt: " in text  # plain YAML, in field order
