"""`gptkit arena RESULTS`: the table, the JSON and the picture; one-line errors (exit 2) for
folders without votes, with one model, or that are not votes folders."""

from __future__ import annotations

import json

import pytest

from gptkit.arena.store import Battle, VoteStore
from gptkit.cli import main


def folder_with(path, *battles):
    store = VoteStore.create(path)
    for i, (a, b, winner) in enumerate(battles):
        store.add_battle(Battle(f"{path.name}{i}", "p", a, b))
        if winner:
            store.vote(f"{path.name}{i}", winner)
    return path


def test_table_json_and_picture(tmp_path, capsys):
    one = folder_with(tmp_path / "one", ("big", "small", "a"), ("small", "big", "b"),
                      ("big", "small", "tie"), ("big", "small", None))
    two = folder_with(tmp_path / "two", ("small", "big", "a"), ("mid", "big", "both_bad"))
    assert main(["arena", str(one), str(two), "--out", str(tmp_path / "r.png")]) in (0, None)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["rank", "model", "rating", "battles"]
    assert out[1].split()[:2] == ["1", "big"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(["arena", str(one), str(two), "--json", "--prior", "0"])
    report = json.loads(capsys.readouterr().out)
    big = next(m for m in report["models"] if m["model"] == "big")
    # big: beat small twice (one/0, one/1), lost to small once (two/0), tied small (one/2)
    # and mid (two/1, both bad): 5 voted battles; one/3 has no vote and does not count
    assert (big["battles"], big["wins"], big["ties"], big["losses"]) == (5, 2, 2, 1)
    assert big["win_rate"] == pytest.approx(2 / 3)
    assert report["prior"] == 0 and report["interval"] == "wilson 95%"


@pytest.mark.parametrize("case,message", [
    ("empty", "no votes in"),
    ("not-votes", "not a votes folder"),
    ("missing", "is not a folder"),
])
def test_bad_results_folders_are_one_line_errors(tmp_path, capsys, case, message):
    folder = tmp_path / case
    if case == "empty":
        folder_with(folder, ("x", "y", None))  # a battle, no vote
    elif case == "not-votes":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        main(["arena", str(folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
