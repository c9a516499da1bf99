"""The votes store: durable across reopening, one vote per battle, no vote lost when several
processes and threads write at once, and folders that are not votes stores refused."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from gptkit.arena.store import VOTES_FILE, AlreadyVoted, Battle, UnknownBattle, VoteStore
from gptkit.errors import GptkitError

WRITERS, EACH = 4, 25


def test_battles_and_votes_survive_reopening(tmp_path):
    store = VoteStore.create(tmp_path / "votes")
    store.add_battle(Battle("b1", "ROMEO:", "small", "big"))
    again = VoteStore.create(tmp_path / "votes")  # a restarted server
    assert again.vote("b1", "b") == Battle("b1", "ROMEO:", "small", "big")
    (vote,) = VoteStore.open(tmp_path / "votes").votes()
    assert (vote.model_a, vote.model_b, vote.winner) == ("small", "big", "b")
    assert sqlite3.connect(tmp_path / "votes" / VOTES_FILE).execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_one_vote_per_battle_and_no_vote_for_an_unknown_battle(tmp_path):
    store = VoteStore.create(tmp_path)
    store.add_battle(Battle("b1", "p", "x", "y"))
    store.vote("b1", "tie")
    with pytest.raises(AlreadyVoted):
        store.vote("b1", "a")
    with pytest.raises(UnknownBattle):
        store.vote("nope", "a")
    with pytest.raises(GptkitError, match="winner must be one of a, b, tie, both_bad"):
        store.vote("b1", "left")
    assert [v.winner for v in store.votes()] == ["tie"]


def _writer(folder: str, worker: int) -> None:
    store = VoteStore.create(folder)
    for i in range(EACH):
        store.add_battle(Battle(f"{worker}-{i}", "p", "x", "y"))
        store.vote(f"{worker}-{i}", "a" if i % 2 else "b")


def test_concurrent_writers_lose_no_vote(tmp_path):
    """Processes (several servers on one folder) and threads (one server's requests) create
    the store and vote at the same time; every vote is there afterwards."""
    folder = str(tmp_path / "votes")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(folder, w)) for w in range(WRITERS)]
    threads = [threading.Thread(target=_writer, args=(folder, WRITERS + w))
               for w in range(WRITERS)]
    for worker in [*processes, *threads]:
        worker.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    for thread in threads:
        thread.join(timeout=120)
    votes = VoteStore.open(folder).votes()
    assert len(votes) == 2 * WRITERS * EACH
    assert len({v.battle_id for v in votes}) == 2 * WRITERS * EACH


def test_a_second_vote_racing_the_first_is_refused(tmp_path):
    store = VoteStore.create(tmp_path)
    store.add_battle(Battle("b1", "p", "x", "y"))
    outcomes: list[str] = []

    def vote() -> None:
        try:
            store.vote("b1", "a")
            outcomes.append("ok")
        except AlreadyVoted:
            outcomes.append("refused")

    threads = [threading.Thread(target=vote) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


def test_folders_that_are_not_votes_stores_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x")
    with pytest.raises(GptkitError, match="not a votes folder"):
        VoteStore.create(tmp_path / "run")
    with pytest.raises(GptkitError, match="not a votes folder"):
        VoteStore.open(tmp_path / "run")
    with pytest.raises(GptkitError, match="is not a folder"):
        VoteStore.open(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / VOTES_FILE).write_text("not a database at all, just some text" * 20)
    with pytest.raises(GptkitError, match="not a votes database"):
        VoteStore.open(tmp_path / "bad")
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / VOTES_FILE).execute("CREATE TABLE meta (key, value)").connection \
        .commit()
    with pytest.raises(GptkitError, match="not a gptkit votes database"):
        VoteStore.open(other)
    assert not Path(tmp_path / "missing").exists()
