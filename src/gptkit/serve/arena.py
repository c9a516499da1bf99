"""The arena's routes: blind comparisons of the served models, for the playground's Compare
tab and for automatic judges alike.

    GET  /v1/arena                          the contestants and how many stored prompts
    POST /v1/arena/battles                  {prompt | none: a stored prompt} -> id, sides a/b
    POST /v1/arena/battles/{id}/answers/{a|b}   that side's answer, streamed as completions
    POST /v1/arena/battles/{id}/vote        {winner: a | b | tie | both_bad} -> identities

A battle draws two different contestants and their sides from the OS's random source
(`random.SystemRandom`: nothing a client sees or sends predicts the pairing) and is stored at
once (`gptkit.arena.store`), so its vote still counts after a restart. Answers carry the side,
never the model's name, until the vote reveals both. Each contestant has its own engine,
scheduler and worker thread (the main run's are the server's own), so the two answers decode
at the same time; both sides sample with the same settings (the request's, else the main
run's `sample` section), so that they differ only in the model.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from random import SystemRandom
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from gptkit.arena.store import AlreadyVoted, Battle, UnknownBattle, VoteStore, Winner
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.rundir import RunDir
from gptkit.serve.engine import Engine
from gptkit.serve.errors import APIError
from gptkit.serve.limits import Gate
from gptkit.serve.metrics import Metrics, ModelMetrics, readings_of
from gptkit.serve.replies import Shape, answer
from gptkit.serve.scheduler import Scheduler
from gptkit.serve.schemas import SEED_MAX, SEED_MIN, Strict
from gptkit.serve.settings import ServeSettings

MAX_PROMPT_CHARS = 20_000
CHECKPOINT = re.compile(r"step-\d+")
Side = Literal["a", "b"]


# --- request and response bodies ----------------------------------------------------------------
class BattleRequest(Strict):
    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS,
        description="the prompt both sides answer; none: a random one of the server's "
        "--prompts file")


class BattleInfo(Strict):
    id: str
    prompt: str
    sides: list[Side] = ["a", "b"]


class AnswerRequest(Strict):
    max_tokens: int | None = Field(None, ge=1, description="new tokens (default: the main "
                                   "run's sample.max_new_tokens, within the server's limit)")
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, description="0 = all tokens")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX,
                             description="same seed, same answer; none: fresh randomness")
    stream: bool = Field(True, description="server-sent events, as /v1/completions streams")


class VoteRequest(Strict):
    winner: Winner = Field(description="a, b, tie, or both_bad")


class VoteResult(Strict):
    id: str
    winner: Winner
    a: str  # the models, revealed
    b: str


class ArenaInfo(Strict):
    models: list[str]
    prompts: int  # how many the --prompts file holds


# --- contestants ------------------------------------------------------------------------------
def contestant(spec: str) -> tuple[Path, str | None, str]:
    """(run folder, checkpoint name or None, contestant name) of a --compare argument: a run
    folder (named after it), or one of its checkpoints RUN/checkpoints/step-N (named
    RUN@step-N)."""
    path = Path(spec)
    if (CHECKPOINT.fullmatch(path.name) and path.parent.name == "checkpoints"
            and RunDir(path.parent.parent).is_run()):
        run = path.parent.parent
        return run, path.name, f"{run.resolve().name}@{path.name}"
    return path, None, path.resolve().name


def read_prompts(file: str | Path) -> list[str]:
    """A --prompts file: one prompt a line (blank lines skipped), or in a .jsonl file one JSON
    string or {"prompt": ...} object a line (prompts of several lines)."""
    path = Path(file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GptkitError(f"--prompts {file}: cannot read it as UTF-8 text ({exc})") from None
    prompts: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GptkitError(f"--prompts {file}:{number}: not JSON ({exc})") from None
            item = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(item, str) or not item:
                raise GptkitError(f"--prompts {file}:{number}: expected a string or "
                                  '{"prompt": "..."}')
            line = item
        prompts.append(line)
    if not prompts:
        raise GptkitError(f"--prompts {file} holds no prompt; write one a line")
    return prompts


@dataclass
class _Seat:
    engine: Engine
    scheduler: Scheduler
    executor: ThreadPoolExecutor | None = None  # its own worker; None: the server's
    metrics: ModelMetrics | None = None  # its series in /metrics, once the routes are made


class Arena:
    """The comparison: `engines` are the contestants besides the main run (one engine each),
    `store` keeps battles and votes, `prompts` are offered when a battle names none."""

    def __init__(self, engines: Sequence[Engine], store: VoteStore,
                 prompts: Sequence[str] = ()) -> None:
        self.engines = list(engines)
        self.store = store
        self.prompts = list(prompts)
        self.random = SystemRandom()
        self.seats: dict[str, _Seat] = {}
        for engine in self.engines:
            if engine.task != "generate":
                raise GptkitError(f"{engine.name} is a classifier run; only language models "
                                  "can answer prompts in the arena")

    def seat(self, main: Engine, scheduler: Scheduler) -> None:
        """Take the main run's engine as a contestant; names must differ."""
        if main.task != "generate":
            raise GptkitError(f"{main.name} is a classifier run; only language models can "
                              "answer prompts in the arena")
        self.seats = {main.name: _Seat(main, scheduler)}
        for engine in self.engines:
            if engine.name in self.seats:
                raise GptkitError(f"two contestants are named {engine.name!r}; compare "
                                  "different runs or checkpoints (RUN/checkpoints/step-N)")
            self.seats[engine.name] = _Seat(engine, Scheduler(engine))
        if len(self.seats) < 2:
            raise GptkitError("the arena needs at least 2 models: add --compare RUN2")

    def start(self) -> None:
        """Start the other contestants' workers (inside the running event loop)."""
        for name, seat in self.seats.items():
            if seat.executor is None and seat.scheduler.executor is None:
                seat.executor = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix=f"gptkit-{name}")
                seat.scheduler.start(seat.executor)

    async def stop(self) -> None:
        for seat in self.seats.values():
            if seat.executor is not None:
                await seat.scheduler.stop()
                seat.executor.shutdown(wait=False, cancel_futures=True)
                seat.executor = None

    # --- the routes -------------------------------------------------------------------------
    def router(self, main: Engine, scheduler: Scheduler, gate: Gate, settings: ServeSettings,
               metrics: Metrics) -> APIRouter:
        self.seat(main, scheduler)
        for name, seat in self.seats.items():  # each contestant's own series in /metrics
            def waiting(queue: Scheduler = seat.scheduler) -> float:
                return queue.queued

            seat.metrics = metrics.main if seat.engine is main else metrics.for_model(
                name, readings_of(seat.engine.stats, waiting, settings.max_batch_size))
        sample = main.run.config.sample
        router = APIRouter(prefix="/v1/arena", tags=["arena"])

        def find(battle_id: str) -> Battle:
            try:
                return self.store.battle(battle_id)
            except UnknownBattle as exc:
                raise APIError(404, str(exc), code="battle_not_found", param="id") from exc

        @router.get("", response_model=ArenaInfo)
        async def info() -> ArenaInfo:
            """The contestants (which one answers which battle stays hidden)."""
            return ArenaInfo(models=sorted(self.seats), prompts=len(self.prompts))

        @router.post("/battles", response_model=BattleInfo)
        async def new_battle(body: BattleRequest) -> BattleInfo:
            """Two different models, drawn at random, on random sides."""
            prompt = body.prompt
            if prompt is None:
                if not self.prompts:
                    raise APIError(422, "prompt: give one (this server has no --prompts "
                                   "file to draw from)", param="prompt")
                prompt = self.random.choice(self.prompts)
            a, b = self.random.sample(sorted(self.seats), 2)
            battle = Battle(f"battle-{uuid.UUID(int=self.random.getrandbits(128)).hex}",
                            prompt, a, b)
            await asyncio.to_thread(self.store.add_battle, battle)
            return BattleInfo(id=battle.id, prompt=prompt)

        @router.post("/battles/{battle_id}/answers/{side}")
        async def answer(battle_id: str, side: Side, body: AnswerRequest,
                         request: Request) -> Response:
            """One side's answer, shaped as /v1/completions answers (the model field says
            the side only); streamed unless `stream` is false."""
            battle = await asyncio.to_thread(find, battle_id)
            name = battle.model_a if side == "a" else battle.model_b
            seat = self.seats.get(name)
            if seat is None:
                raise APIError(409, f"battle {battle_id} was drawn by a server that served "
                               "other models; start a new battle", code="model_not_served")
            try:
                ids = seat.engine.encode_prompt(battle.prompt)
            except GptkitError as exc:
                raise APIError(422, str(exc), param="prompt") from exc
            if len(ids) > settings.max_prompt_tokens:
                raise APIError(413, f"the prompt is {len(ids)} tokens long, more than the "
                               f"server's limit of {settings.max_prompt_tokens} tokens",
                               code="prompt_too_long", param="prompt")
            max_tokens = body.max_tokens or min(sample.max_new_tokens, settings.max_tokens)
            if max_tokens > settings.max_tokens:
                raise APIError(422, f"max_tokens: {max_tokens} is more than the server's "
                               f"limit of {settings.max_tokens}", param="max_tokens")
            top_k = sample.top_k if body.top_k is None else body.top_k
            config = GenerationConfig(
                max_new_tokens=max_tokens,
                temperature=sample.temperature if body.temperature is None
                else body.temperature,
                top_k=top_k or None, top_p=sample.top_p if body.top_p is None else body.top_p,
                seed=body.seed)
            return await self._generate(seat, ids, config, body.stream, side, gate, request)

        @router.post("/battles/{battle_id}/vote", response_model=VoteResult)
        async def vote(battle_id: str, body: VoteRequest) -> VoteResult:
            """Record the vote (one per battle) and reveal who answered on each side."""
            try:
                battle = await asyncio.to_thread(self.store.vote, battle_id, body.winner)
            except UnknownBattle as exc:
                raise APIError(404, str(exc), code="battle_not_found", param="id") from exc
            except AlreadyVoted as exc:
                raise APIError(409, str(exc), code="already_voted", param="id") from exc
            return VoteResult(id=battle.id, winner=body.winner, a=battle.model_a,
                              b=battle.model_b)

        return router

    async def _generate(self, seat: _Seat, ids: list[int], config: GenerationConfig,
                        streamed: bool, side: str, gate: Gate, request: Request) -> Response:
        """Queue the answer on the contestant's scheduler; stream or collect its events."""
        assert seat.metrics is not None  # set with the routes
        return await answer(seat.scheduler, gate, seat.metrics, request, Shape([""]),
                            f"arena-{side}", [ids], config, streamed)
