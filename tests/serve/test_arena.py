"""The arena's API: battles between two hidden models, each side's answer streamed, one vote
per battle revealing who answered; checkpoints as contestants; votes kept across a restart;
JSON 4xx for bad votes and one-line errors for bad serve options."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptkit.arena.store import VoteStore
from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.run import load_run
from gptkit.rundir import RunDir
from gptkit.serve import ServeSettings, create_app
from gptkit.serve.arena import Arena, contestant
from gptkit.serve.engine import Engine
from tests.serve.conftest import sse_events, stream_texts


def engine_of(spec: str) -> Engine:
    path, which, name = contestant(spec)
    return Engine(load_run(path, which=which or "best"), name, max_batch_size=4)


@pytest.fixture(scope="module")
def step10(tiny_run: Path) -> str:
    return str(tiny_run / "checkpoints" / "step-000010")


def arena_client(tiny_run: Path, votes: Path, *specs: str, prompts: list[str] | None = None
                 ) -> Any:
    from fastapi.testclient import TestClient

    arena = Arena([engine_of(s) for s in specs], VoteStore.create(votes), prompts or [])
    app = create_app(load_run(tiny_run), ServeSettings(max_tokens=64, max_batch_size=4),
                     arena=arena)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(tiny_run: Path, step10: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Any]:
    votes = tmp_path_factory.mktemp("arena") / "votes"
    with arena_client(tiny_run, votes, step10, prompts=["JULIET:", "ROMEO:"]) as test_client:
        yield test_client


def test_a_checkpoint_is_a_contestant_of_its_own(tiny_run, step10):
    path, which, name = contestant(step10)
    assert (path, which, name) == (tiny_run, "step-000010", "tiny@step-000010")
    assert RunDir(tiny_run).weights("step-000010") == Path(step10) / "model.safetensors"
    best, ten = load_run(tiny_run).model, load_run(tiny_run, which="step-000010").model
    assert any((p - q).abs().max() > 0 for p, q in
               zip(best.parameters(), ten.parameters(), strict=True))
    with pytest.raises(GptkitError, match="step-99 does not exist; the run's checkpoints: "
                                          "step-000010, step-000020"):
        RunDir(tiny_run).weights("step-99")


def test_a_battle_hides_the_models_until_the_vote(client):
    assert client.get("/v1/arena").json()["models"] == ["tiny", "tiny@step-000010"]
    battle = client.post("/v1/arena/battles", json={"prompt": "ROMEO:"}).json()
    assert battle["prompt"] == "ROMEO:" and battle["sides"] == ["a", "b"]
    for side in ("a", "b"):
        with client.stream("POST", f"/v1/arena/battles/{battle['id']}/answers/{side}",
                           json={"max_tokens": 8}) as response:
            assert response.status_code == 200
            events = sse_events(response.iter_lines())
        assert events[-1] == "[DONE]"
        texts, reasons = stream_texts(events)
        assert texts[0] and reasons[0] in ("stop", "length")
        assert {e["model"] for e in events[:-1]} == {f"arena-{side}"}
        assert "tiny" not in str(events)
    wholes = [client.post(f"/v1/arena/battles/{battle['id']}/answers/b", json={
        "max_tokens": 24, "stream": False, "temperature": 1.0, **seed}).json()
        for seed in ({}, {}, {"seed": 5}, {"seed": 5})]
    assert {w["model"] for w in wholes} == {"arena-b"}
    texts = [w["choices"][0]["text"] for w in wholes]
    assert texts[0] != texts[1]  # no seed: fresh randomness for every answer
    assert texts[2] == texts[3]  # a seed: the same answer
    result = client.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "b"})
    assert result.status_code == 200
    revealed = result.json()
    assert {revealed["a"], revealed["b"]} == {"tiny", "tiny@step-000010"}
    assert revealed["winner"] == "b"


def test_each_contestant_has_its_own_series_in_metrics(tiny_run, step10, tmp_path):
    """An arena answer is counted under the model that gave it, and each contestant's engine
    (queue, rows, KV use) is read on its own."""
    from tests.serve.test_metrics import scrape, value

    with arena_client(tiny_run, tmp_path / "votes", step10) as test_client:
        battle = test_client.post("/v1/arena/battles", json={"prompt": "ROMEO:"}).json()
        tokens = {}  # each side's completion tokens (sampled: an answer may end early)
        for side, count in (("a", 5), ("b", 7)):
            answer = test_client.post(f"/v1/arena/battles/{battle['id']}/answers/{side}",
                                      json={"max_tokens": count, "stream": False})
            tokens[side] = answer.json()["usage"]["completion_tokens"]
        names = test_client.post(f"/v1/arena/battles/{battle['id']}/vote",
                                 json={"winner": "tie"}).json()
        samples = scrape(test_client)
    for side, count in tokens.items():
        name = names[side]
        assert value(samples, "gptkit_completion_tokens_total", model=name) == count
        assert value(samples, "gptkit_request_duration_seconds_count", model=name) == 1
        for gauge in ("gptkit_rows_running", "gptkit_requests_waiting"):
            assert (gauge, (("model", name),)) in samples
    answers = "/v1/arena/battles/{battle_id}/answers/{side}"  # by route, as every endpoint
    assert value(samples, "gptkit_requests_total", endpoint=answers, status="200") == 2


def test_pairs_and_sides_are_drawn_at_random(client):
    """20 battles without a prompt: each takes one of the --prompts file's, and both side
    orders occur (each has probability 2**-20 of never occurring)."""
    prompts, orders = set(), set()
    for _ in range(20):
        battle = client.post("/v1/arena/battles", json={}).json()
        prompts.add(battle["prompt"])
        revealed = client.post(f"/v1/arena/battles/{battle['id']}/vote",
                               json={"winner": "tie"}).json()
        orders.add((revealed["a"], revealed["b"]))
    assert prompts <= {"JULIET:", "ROMEO:"}
    assert orders == {("tiny", "tiny@step-000010"), ("tiny@step-000010", "tiny")}


def test_bad_votes_and_answers_are_json_4xx(client):
    battle = client.post("/v1/arena/battles", json={"prompt": "KING:"}).json()["id"]
    cases = [
        ("/v1/arena/battles/nope/vote", {"winner": "a"}, 404, "battle_not_found"),
        (f"/v1/arena/battles/{battle}/vote", {"winner": "left"}, 422, "invalid_value"),
        (f"/v1/arena/battles/{battle}/vote", {"winner": "a", "extra": 1}, 422,
         "unknown_field"),
        (f"/v1/arena/battles/{battle}/answers/c", {}, 422, "invalid_value"),
        ("/v1/arena/battles/nope/answers/a", {}, 404, "battle_not_found"),
        (f"/v1/arena/battles/{battle}/answers/a", {"max_tokens": 65}, 422, "invalid_value"),
        ("/v1/arena/battles", {"prompt": ""}, 422, "invalid_value"),
    ]
    for url, body, status, code in cases:
        response = client.post(url, json=body)
        assert response.status_code == status, (url, body, response.text)
        assert response.json()["error"]["code"] == code, (url, body, response.json())
    assert client.post(f"/v1/arena/battles/{battle}/vote", json={"winner": "tie"}).status_code \
        == 200
    again = client.post(f"/v1/arena/battles/{battle}/vote", json={"winner": "a"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"


def test_a_vote_after_a_restart_counts_and_no_prompt_file_is_a_422(tiny_run, step10,
                                                                     tmp_path):
    votes = tmp_path / "votes"
    with arena_client(tiny_run, votes, step10) as first:
        battle = first.post("/v1/arena/battles", json={"prompt": "ROMEO:"}).json()["id"]
        missing = first.post("/v1/arena/battles", json={})
        assert missing.status_code == 422 and "--prompts" in missing.json()["error"]["message"]
    with arena_client(tiny_run, votes, step10) as second:  # the server restarted
        assert second.post(f"/v1/arena/battles/{battle}/vote",
                           json={"winner": "both_bad"}).status_code == 200
    (vote,) = VoteStore.open(votes).votes()
    assert vote.winner == "both_bad"
    # a server of other models still takes votes, but cannot answer for a model it lacks
    other = str(tiny_run / "checkpoints" / "step-000020")
    with arena_client(tiny_run, votes, other) as third:
        statuses = {third.post(f"/v1/arena/battles/{battle}/answers/{side}",
                               json={"max_tokens": 2, "stream": False}).status_code
                    for side in "ab"}
        assert statuses == {200, 409}


@pytest.mark.parametrize("extra,message", [
    (["--votes", "V"], "--votes belongs to a comparison, which needs at least 2 models"),
    (["--prompts", "P"], "--prompts belongs to a comparison"),
    (["--compare", "SELF"], "--compare needs --votes FOLDER"),
    (["--compare", "SELF", "--votes", "V"], "two contestants are named 'tiny'"),
    (["--compare", "CKPT99", "--votes", "V"], "step-000099 does not exist"),
    (["--compare", "CKPT", "--votes", "NOTVOTES"], "not a votes folder"),
])
def test_bad_serve_options_are_one_line_errors(tiny_run, tmp_path, capsys, extra, message):
    (tmp_path / "notvotes").mkdir()
    (tmp_path / "notvotes" / "x.txt").write_text("x")
    names = {"V": str(tmp_path / "v"), "P": str(tmp_path / "p.txt"), "SELF": str(tiny_run),
             "CKPT": str(tiny_run / "checkpoints" / "step-000010"),
             "CKPT99": str(tiny_run / "checkpoints" / "step-000099"),
             "NOTVOTES": str(tmp_path / "notvotes")}
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tiny_run), "--port", "0", *[names.get(a, a) for a in extra]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
