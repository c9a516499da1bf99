"""The votes store: one SQLite file (`votes.sqlite`) in the folder `gptkit serve --votes`
names, the only code that reads or writes it.

Battles are stored when they are made (prompt and the two hidden identities), votes when they
are cast, so a vote survives a restart of the server and a vote cast after a restart still
finds its battle. The file is in WAL mode and every write is one short `BEGIN IMMEDIATE`
transaction on a connection of its own, with a busy timeout: several threads or server
processes can write to one folder at once without losing a vote. A battle takes one vote:
the second is refused by the primary key, not by a check that could race.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from gptkit.errors import GptkitError

VOTES_FILE = "votes.sqlite"
FORMAT = "gptkit-arena"  # in the `meta` table: what tells a votes store from another database
VERSION = 1
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another's transaction to end

Winner = Literal["a", "b", "tie", "both_bad"]
WINNERS: tuple[str, ...] = get_args(Winner)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY, created REAL NOT NULL, prompt TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, CHECK (model_a <> model_b));
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY REFERENCES battles(id), voted REAL NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ({", ".join(f"'{w}'" for w in WINNERS)})));
"""


class UnknownBattle(GptkitError):
    """No battle has this id (in this votes folder)."""


class AlreadyVoted(GptkitError):
    """The battle has its vote already."""


@dataclass(frozen=True)
class Battle:
    id: str
    prompt: str
    model_a: str
    model_b: str


@dataclass(frozen=True)
class Vote:
    """One decided battle: who sat on which side and what the voter chose."""

    battle_id: str
    model_a: str
    model_b: str
    winner: Winner


class VoteStore:
    """A votes folder. `VoteStore.create(folder)` makes (or reopens) one for a server;
    `VoteStore.open(folder)` opens an existing one for reading (`gptkit arena`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / VOTES_FILE

    @classmethod
    def create(cls, folder: str | Path) -> VoteStore:
        """The store in `folder`, made if the folder is new or empty; a folder holding other
        things and no votes file is refused (it is not a votes folder)."""
        store = cls(Path(folder))
        if store.folder.exists() and not store.folder.is_dir():
            raise GptkitError(f"--votes {folder}: not a folder; name a folder for the votes "
                              "(it is made if missing)")
        if not store.file.exists() and store.folder.is_dir() and any(store.folder.iterdir()):
            raise GptkitError(f"--votes {folder}: the folder holds other files and no "
                              f"{VOTES_FILE}, so it is not a votes folder; name a new or empty "
                              "folder")
        store.folder.mkdir(parents=True, exist_ok=True)
        with store._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, SCHEMA.split(";")):
                con.execute(statement)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)",
                        (FORMAT, str(VERSION)))
            con.execute("COMMIT")
        return store.check()

    @classmethod
    def open(cls, folder: str | Path) -> VoteStore:
        """An existing votes folder (as `gptkit serve --votes` wrote it)."""
        store = cls(Path(folder))
        if not store.folder.is_dir():
            raise GptkitError(f"{folder} is not a folder; name the folder given to gptkit "
                              "serve --votes")
        if not store.file.is_file():
            raise GptkitError(f"{folder} holds no {VOTES_FILE}: it is not a votes folder "
                              "(gptkit serve RUN --compare RUN2 --votes FOLDER makes one)")
        return store.check()

    def check(self) -> VoteStore:
        """This store, if its file is a votes database this gptkit reads."""
        try:
            with self._connect() as con:
                rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise GptkitError(f"{self.file} is not a votes database ({exc}); name another "
                              "folder") from None
        if rows.get("format") != FORMAT:
            raise GptkitError(f"{self.file} is not a gptkit votes database; name another "
                              "folder")
        if rows.get("version") != str(VERSION):
            raise GptkitError(f"{self.file} is version {rows.get('version')} of the votes "
                              f"format; this gptkit reads version {VERSION}: update gptkit")
        return self

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # autocommit (isolation_level None): transactions are begun explicitly, IMMEDIATE, so
        # that a writer takes the write lock at once and waits (busy timeout) instead of
        # failing on upgrade from a read lock
        with closing(sqlite3.connect(self.file, timeout=BUSY_TIMEOUT_S,
                                     isolation_level=None)) as con:
            con.execute("PRAGMA foreign_keys=ON")
            yield con

    # --- writing -------------------------------------------------------------------------------
    def add_battle(self, battle: Battle) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?)",
                        (battle.id, time.time(), battle.prompt, battle.model_a,
                         battle.model_b))
            con.execute("COMMIT")

    def vote(self, battle_id: str, winner: str) -> Battle:
        """Record the vote; the battle, whose identities the voter may now see.
        UnknownBattle, AlreadyVoted, or GptkitError for a winner outside WINNERS."""
        if winner not in WINNERS:
            raise GptkitError(f"winner must be one of {', '.join(WINNERS)}, got {winner!r}")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT id, prompt, model_a, model_b FROM battles "
                                  "WHERE id = ?", (battle_id,)).fetchone()
                if row is None:
                    raise UnknownBattle(f"no battle {battle_id!r} in {self.folder}; start one "
                                        "with POST /v1/arena/battles")
                try:
                    con.execute("INSERT INTO votes VALUES (?, ?, ?)",
                                (battle_id, time.time(), winner))
                except sqlite3.IntegrityError:
                    raise AlreadyVoted(f"battle {battle_id!r} has its vote already; start a "
                                       "new battle") from None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return Battle(*row)

    # --- reading -------------------------------------------------------------------------------
    def battle(self, battle_id: str) -> Battle:
        with self._connect() as con:
            row = con.execute("SELECT id, prompt, model_a, model_b FROM battles WHERE id = ?",
                              (battle_id,)).fetchone()
        if row is None:
            raise UnknownBattle(f"no battle {battle_id!r} in {self.folder}; start one with "
                                "POST /v1/arena/battles")
        return Battle(*row)

    def votes(self) -> list[Vote]:
        """Every decided battle, oldest vote first."""
        with self._connect() as con:
            rows = con.execute("SELECT v.battle_id, b.model_a, b.model_b, v.winner FROM votes "
                               "v JOIN battles b ON b.id = v.battle_id ORDER BY v.voted, "
                               "v.battle_id").fetchall()
        return [Vote(*row) for row in rows]

    def battles(self) -> int:
        """How many battles were started (voted or not)."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM battles").fetchone()[0])
