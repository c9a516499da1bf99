"""OpenAI's frequency/presence penalties and logit bias: the processors against a hand
computation, their settings in GenerationConfig, `gptkit sample`'s flags and generation."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.generation import logits_process as lp
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate
from gptkit.model import GPT


def test_penalties_count_only_the_generated_tokens():
    # prompt [9, 9] (width 2), then generated 1, 2, 2, 2
    ids = torch.tensor([[9, 9, 1, 2, 2, 2], [3, 0, 0, 0, 4, 4]])
    scores = torch.zeros(2, 10)
    out = lp.FrequencyPresencePenaltyLogitsProcessor(0.5, 1.0, prompt_length=2)(ids, scores)
    expected = torch.zeros(2, 10)
    expected[0, 1] = -(0.5 * 1 + 1.0)
    expected[0, 2] = -(0.5 * 3 + 1.0)
    expected[1, 0] = -(0.5 * 2 + 1.0)  # 0 twice after the prompt (3, 0)
    expected[1, 4] = -(0.5 * 2 + 1.0)
    assert torch.equal(out, expected)  # 9 and 3 (prompt only) are not penalised


def test_negative_penalties_encourage_repeats_and_neutral_ones_add_nothing():
    ids = torch.tensor([[1, 2, 2]])
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    out = lp.FrequencyPresencePenaltyLogitsProcessor(-1.0, -0.5, prompt_length=0)(ids, scores)
    assert out.tolist() == [[0.0, 2.5, 4.5, 3.0]]
    assert not lp.build_processors(frequency_penalty=0.0, presence_penalty=0.0)


def test_logit_bias_adds_to_its_tokens_and_checks_the_vocabulary():
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    out = lp.LogitBiasLogitsProcessor({0: 5.0, 2: -100.0})(torch.zeros(1, 1, dtype=torch.long),
                                                           scores)
    assert out.tolist() == [[5.0, 1.0, -98.0]]
    with pytest.raises(GptkitError, match="token id 3 is outside the vocabulary"):
        lp.LogitBiasLogitsProcessor({3: 1.0})(torch.zeros(1, 1, dtype=torch.long), scores)


def test_the_chain_skips_the_padded_prompt_for_penalties():
    chain = lp.build_processors(temperature=0.0, frequency_penalty=0.3, presence_penalty=0.2,
                                logit_bias={1: 2.0}, prompt_length=7)
    assert [type(p).__name__ for p in chain] == [
        "FrequencyPresencePenaltyLogitsProcessor", "LogitBiasLogitsProcessor"]
    assert chain[0].prompt_length == 7


@pytest.mark.parametrize(("changes", "says"), [
    ({"frequency_penalty": 2.5}, "frequency_penalty must be in [-2, 2]"),
    ({"presence_penalty": -2.1}, "presence_penalty must be in [-2, 2]"),
    ({"logit_bias": {3: 101}}, "logit_bias must map token ids >= 0 to biases in [-100, 100]"),
    ({"logit_bias": {-1: 1}}, "logit_bias must map token ids"),
])
def test_generation_config_checks_the_new_settings(changes, says):
    with pytest.raises(GptkitError) as caught:
        GenerationConfig.parse(changes, prefix="sample.")
    assert says in str(caught.value) and str(caught.value).startswith("sample.")


def test_settings_with_other_penalties_do_not_share_a_batch():
    base = GenerationConfig()
    keys = {base.processor_key(), base.replace(frequency_penalty=0.5).processor_key(),
            base.replace(presence_penalty=0.5).processor_key(),
            base.replace(logit_bias={1: 2.0}).processor_key()}
    assert len(keys) == 4


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()


def test_generation_applies_the_penalties_and_the_bias():
    model = tiny_model()
    greedy = GenerationConfig(temperature=0, max_new_tokens=12, top_k=None)
    plain = generate(model, [1, 2, 3], greedy)[0, 3:].tolist()
    assert len(set(plain)) < len(plain)  # a tiny random model repeats itself
    # a strong presence penalty forbids repeats as long as unseen tokens are left
    varied = generate(model, [1, 2, 3], greedy.replace(presence_penalty=2.0,
                                                       frequency_penalty=2.0))[0, 3:]
    assert varied.tolist() != plain
    forced = generate(model, [1, 2, 3], greedy.replace(logit_bias={7: 100.0}))[0, 3:]
    assert forced.tolist() == [7] * 12
    banned = generate(model, [1, 2, 3], greedy.replace(logit_bias={plain[0]: -100.0}))[0, 3:]
    assert plain[0] not in banned.tolist()


def test_run_config_sample_section_takes_the_settings():
    settings = GenerationConfig.parse({"frequency_penalty": 0.4, "presence_penalty": -0.2,
                                       "logit_bias": {50: -100}}, prefix="sample.")
    assert settings.frequency_penalty == 0.4 and settings.logit_bias == {50: -100.0}


def test_a_run_config_sample_section_converts_the_new_settings():
    from gptkit.config import build_config

    config = build_config({"sample": {"presence_penalty": "0.5", "logit_bias": {"7": -100}}})
    assert config.sample.presence_penalty == 0.5 and config.sample.logit_bias == {7: -100.0}
    with pytest.raises(GptkitError, match="sample.frequency_penalty must be in"):
        build_config({"sample": {"frequency_penalty": 3}})


def test_sample_flags_for_penalties_and_logit_bias(tiny_run, capsys):
    from gptkit.run import load_run
    from tests.test_cli import expect_error, run_cli

    greedy = ("sample", str(tiny_run), "--prompt", "A", "--temperature", "0",
              "--max-new-tokens", "30")
    _, plain, _ = run_cli(capsys, *greedy)
    _, penalised, _ = run_cli(capsys, *greedy, "--frequency-penalty", "2",
                              "--presence-penalty", "2")
    assert penalised != plain
    e_id = load_run(tiny_run).tokenizer.encode("e")[0]
    code, forced, err = run_cli(capsys, *greedy, "--logit-bias", f"{e_id}=100")
    assert code == 0, err
    assert forced.rstrip("\n") == "A" + "e" * 30
    expect_error(capsys, *greedy, "--frequency-penalty", "3", match="--frequency-penalty must be")
    expect_error(capsys, *greedy, "--logit-bias", "e=1", match="--logit-bias takes ID=BIAS")
