"""The official `openai` Python package against a live `gptkit serve` on 127.0.0.1:
completions (plain, streamed, n, seed, stop, token-id prompts, the neutral fields as the SDK
sends them, penalties, logprobs, echo with logprobs, streamed logprobs, best_of), chat
completions (plain, streamed, multi-turn, n, stop, usage, a run without a chat template),
models.list and models.retrieve, and a wrong API key."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip(
    "openai", reason="the openai package is not installed: pip install -e '.[dev]'")

from gptkit.run import Run  # noqa: E402
from tests.serve.conftest import live_server  # noqa: E402

KEY = "s3cret"


@pytest.fixture(scope="module")
def server(run: Run) -> Iterator[str]:
    with live_server(run, api_key=KEY, max_tokens=64) as (url, _):
        yield url


@pytest.fixture(scope="module")
def sdk(server: str) -> Any:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def texts(result: Any) -> list[str]:
    return [choice.text for choice in sorted(result.choices, key=lambda c: c.index)]


def test_plain_and_streamed_completions_agree(sdk):
    plain = sdk.completions.create(model="tiny", prompt="ROMEO:", max_tokens=16, temperature=0)
    assert plain.object == "text_completion" and plain.model == "tiny"
    (choice,) = plain.choices
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert plain.usage.prompt_tokens == len("ROMEO:")
    streamed: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in sdk.completions.create(model="tiny", prompt="ROMEO:", max_tokens=16,
                                        temperature=0, stream=True):
        for part in chunk.choices:
            streamed[part.index] = streamed.get(part.index, "") + part.text
            if part.finish_reason:
                reasons[part.index] = part.finish_reason
    assert streamed == {0: choice.text} and reasons == {0: choice.finish_reason}


def test_n_seed_and_stop(sdk):
    def seeded(seed: int, n: int = 3, **more: Any) -> list[str]:
        return texts(sdk.completions.create(model="tiny", prompt="A", max_tokens=24, n=n,
                                            temperature=1.0, seed=seed, **more))

    first = seeded(7)
    assert len(first) == 3 and first == seeded(7) and first != seeded(8)
    (whole,) = seeded(7, n=1)
    (stopped,) = seeded(7, n=1, stop=["e", "\n"])
    assert "e" not in stopped and "\n" not in stopped
    assert whole.startswith(stopped) and len(whole) > len(stopped)


def test_token_id_prompts(sdk, run):
    ids = run.tokenizer.encode("ROMEO:")
    by_text = texts(sdk.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8,
                                           temperature=0))
    by_ids = sdk.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert texts(by_ids) == by_text
    batch = sdk.completions.create(model="tiny", prompt=[ids, ids], max_tokens=8,
                                   temperature=0)
    assert texts(batch) == by_text * 2


def test_neutral_fields_as_the_sdk_sends_them(sdk):
    greedy = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}
    neutral = sdk.completions.create(
        **greedy, frequency_penalty=0, presence_penalty=0, logprobs=None, best_of=1,
        logit_bias={}, suffix=None, user="someone", echo=False, n=1, stop=None, top_p=1)
    assert texts(neutral) == texts(sdk.completions.create(**greedy))


def test_penalties_change_the_text(sdk):
    greedy = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 20, "temperature": 0}
    plain = texts(sdk.completions.create(**greedy))
    penalised = texts(sdk.completions.create(**greedy, frequency_penalty=2.0,
                                             presence_penalty=2.0))
    assert penalised != plain


def test_logprobs(sdk):
    result = sdk.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8,
                                    temperature=0, logprobs=2)
    lp = result.choices[0].logprobs
    assert "".join(lp.tokens) == result.choices[0].text and len(lp.tokens) == 8
    assert all(len(top) == 2 and logprob == max(top.values())
               for logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True))
    assert lp.text_offset == list(range(8))  # one character per token


def test_echo_with_logprobs_of_a_token_id_prompt(sdk, run):
    """lm-evaluation-harness' loglikelihood request, through the SDK."""
    ids = run.tokenizer.encode("ROMEO: to")
    result = sdk.completions.create(model="tiny", prompt=ids, echo=True, max_tokens=1,
                                    logprobs=1, temperature=0)
    lp = result.choices[0].logprobs
    assert result.choices[0].text.startswith("ROMEO: to")
    assert lp.tokens[: len(ids)] == list("ROMEO: to") and len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:])
    assert all(len(top) in (1, 2) for top in lp.top_logprobs[1:])


def test_streamed_logprobs_match_the_plain_ones(sdk):
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0.9,
            "seed": 8, "logprobs": 1}
    plain = sdk.completions.create(**body).choices[0].logprobs
    tokens: list[str] = []
    logprobs: list[float] = []
    for chunk in sdk.completions.create(**body, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                assert "".join(choice.logprobs.tokens) == choice.text
                tokens += choice.logprobs.tokens
                logprobs += choice.logprobs.token_logprobs
    assert tokens == plain.tokens and logprobs == plain.token_logprobs


def test_best_of(sdk):
    result = sdk.completions.create(model="tiny", prompt="ROMEO:", max_tokens=6, n=2,
                                    best_of=4, seed=1, temperature=1.0)
    assert len(result.choices) == 2 and result.usage.completion_tokens > 0
    with pytest.raises(openai.UnprocessableEntityError, match="cannot stream"):
        sdk.completions.create(model="tiny", prompt="A", max_tokens=2, best_of=2,
                               stream=True)


def test_what_cannot_be_honoured_raises_the_sdks_error(sdk):
    with pytest.raises(openai.UnprocessableEntityError, match="suffix is not supported"):
        sdk.completions.create(model="tiny", prompt="A", suffix="end", max_tokens=2)


def test_models_list_and_retrieve(sdk):
    (card,) = sdk.models.list().data
    assert card.id == "tiny" and card.object == "model" and card.owned_by == "gptkit"
    assert sdk.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        sdk.models.retrieve("gpt-4")


def test_a_wrong_api_key_is_an_authentication_error(server):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="A", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


# --- chat completions ---------------------------------------------------------------------
CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def chat_sdk(chat_run: Run) -> Iterator[Any]:
    """The SDK on a live server of the tiny run with gptkit's chat template."""
    with live_server(chat_run, api_key=KEY, max_tokens=64, max_prompt_tokens=400) as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def replies(result: Any) -> list[str]:
    return [c.message.content for c in sorted(result.choices, key=lambda c: c.index)]


def test_chat_plain_and_streamed_agree(chat_sdk):
    settings = {"model": "tiny", "messages": CHAT, "max_tokens": 16, "temperature": 0.9,
                "seed": 4}
    plain = chat_sdk.chat.completions.create(**settings)
    assert plain.object == "chat.completion" and plain.model == "tiny"
    (choice,) = plain.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    text, reasons, roles = "", [], []
    for chunk in chat_sdk.chat.completions.create(**settings, stream=True):
        assert chunk.object == "chat.completion.chunk"
        for part in chunk.choices:
            roles += [part.delta.role] if part.delta.role else []
            text += part.delta.content or ""
            reasons += [part.finish_reason] if part.finish_reason else []
    assert roles == ["assistant"] and text == choice.message.content
    assert reasons == [choice.finish_reason]


def test_chat_multi_turn_n_and_stop(chat_sdk, chat_run):
    from gptkit.chat_template import default_chat_template, encode_chat

    turns = [*CHAT, {"role": "assistant", "content": "Good day."},
             {"role": "user", "content": "And again?"}]
    settings = {"model": "tiny", "messages": turns, "max_completion_tokens": 24,
                "temperature": 1.0, "seed": 9}
    answer = chat_sdk.chat.completions.create(**settings, n=2)
    # the model read the whole history through the template
    assert answer.usage.prompt_tokens == len(encode_chat(
        turns, chat_run.tokenizer, default_chat_template(), add_generation_prompt=True))
    two = replies(answer)
    assert len(two) == 2 and two[0] != two[1]
    (first, _) = two
    stop = first[3:5]
    (cut, _) = replies(chat_sdk.chat.completions.create(**settings, n=2, stop=[stop]))
    assert cut == first[:first.index(stop)]


def test_chat_logprobs(chat_sdk):
    answer = chat_sdk.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=2)
    choice = answer.choices[0]
    tokens = choice.logprobs.content  # parsed into the SDK's own ChatCompletionTokenLogprob
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert len(token.top_logprobs) == 2
        # greedy: the chosen token is the most likely one
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
        assert token.bytes == list(token.token.encode())


def test_chat_stream_with_usage(chat_sdk):
    chunks = list(chat_sdk.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens <= 5
    assert all(c.usage is None for c in chunks[:-1])
    whole = chat_sdk.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5,
                                             temperature=0)
    assert last.usage.total_tokens == whole.usage.total_tokens


def test_chat_errors_are_the_sdks_exceptions(chat_sdk, sdk, server):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        sdk.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError, match="not supported by gptkit"):
        chat_sdk.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2,
                                         response_format={"type": "json_object"})
    wrong = openai.OpenAI(base_url=str(chat_sdk.base_url), api_key="wrong", max_retries=0,
                          timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
