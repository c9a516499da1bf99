"""Small synthetic task files to try every fine-tuning command on (`gptkit examples`).

Everything is generated here from short word lists of our own (invented creatures, an
invented language, templated sentences), deterministically from a seed, so the files are
free to ship and the same on every machine. Each file holds a few hundred records with a
regular pattern that a tiny model can pick up in minutes on a CPU.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError

Row = dict[str, Any]

# --- a made-up world ---------------------------------------------------------------------

SYLLABLES = ["ba", "ko", "li", "mu", "ne", "ri", "so", "ta", "vu", "zi", "pe", "go", "da", "fu"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "grey", "white", "black"]
HOMES = ["forest", "river", "cave", "desert", "mountain", "lake", "meadow", "swamp"]
FOODS = ["berries", "fish", "leaves", "seeds", "mushrooms", "insects", "roots", "honey"]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@dataclass(frozen=True)
class Creature:
    name: str
    colour: str
    home: str
    food: str
    legs: int


def creatures(seed: int, count: int = 75) -> list[Creature]:
    """The fact table behind qa, tasks and chat: invented animals and their traits."""
    rng = random.Random(f"{seed}:creatures")
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if name not in names:
            names.append(name)
    return [
        Creature(name, rng.choice(COLOURS), rng.choice(HOMES), rng.choice(FOODS),
                 rng.choice((2, 4, 6, 8)))
        for name in names
    ]


def _question(creature: Creature, kind: str) -> tuple[str, str]:
    """(question, short answer) about one trait."""
    return {
        "colour": (f"What colour is the {creature.name}?", creature.colour),
        "home": (f"Where does the {creature.name} live?", creature.home),
        "food": (f"What does the {creature.name} eat?", creature.food),
        "legs": (f"How many legs does the {creature.name} have?", str(creature.legs)),
    }[kind]


KINDS = ("colour", "home", "food", "legs")


def qa(seed: int) -> list[Row]:
    """Prompt/response: a question about a creature and its one-word answer."""
    rows = []
    for creature in creatures(seed):
        for kind in KINDS:
            question, answer = _question(creature, kind)
            rows.append({"prompt": f"Q: {question}\nA: ", "response": answer})
    random.Random(f"{seed}:qa").shuffle(rows)
    return rows


def tasks(seed: int) -> list[Row]:
    """Prompt + reference: questions in qa.jsonl's format, to score with eval-generate."""
    rng = random.Random(f"{seed}:tasks")
    rows = []
    for creature in rng.sample(creatures(seed), 50):
        for kind in rng.sample(KINDS, 2):
            question, answer = _question(creature, kind)
            rows.append({"prompt": f"Q: {question}\nA: ", "reference": answer})
    return rows


def arithmetic(seed: int, count: int = 400) -> list[Row]:
    """Prompt "12+7=" and response "19", for sums of two numbers below 50."""
    rng = random.Random(f"{seed}:arithmetic")
    pairs = rng.sample([(a, b) for a in range(50) for b in range(50)], count)
    return [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in pairs]


PEOPLE = ["Anna", "Ben", "Carla", "Dev", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jon",
          "Kira", "Leo", "Mina", "Nils", "Olga", "Pablo"]
PLACES = ["market", "library", "harbour", "bakery", "park", "station", "museum", "garden"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ITEMS = ["apples", "books", "candles", "cups", "maps", "pencils", "shirts", "stamps"]
WEATHER = ["sunny", "windy", "rainy", "cold", "warm", "foggy"]


def summarize(seed: int, count: int = 300) -> list[Row]:
    """Prompt/response: a short story of four sentences and its one-sentence summary."""
    rng = random.Random(f"{seed}:summarize")
    rows = []
    for _ in range(count):
        who, where, day = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(DAYS)
        n, item = rng.choice(NUMBER_WORDS), rng.choice(ITEMS)
        filler = [f"The weather was {rng.choice(WEATHER)}.",
                  f"{who} met {rng.choice([p for p in PEOPLE if p != who])} on the way."]
        rng.shuffle(filler)
        story = " ".join([f"On {day}, {who} went to the {where}.", filler[0],
                          f"{who} bought {n} {item} there.", filler[1]])
        rows.append({"prompt": f"Text: {story}\nSummary: ",
                     "response": f"{who} bought {n} {item} at the {where} on {day}."})
    return rows


# English -> Kelo, an invented language translated word by word (same word order).
KELO = {
    "the": "ka", "a": "na", "an": "na",
    "big": "mor", "small": "pit", "red": "sul", "old": "vash", "happy": "lumi", "fast": "zeb",
    "cat": "miru", "dog": "tako", "bird": "fli", "fish": "ulo", "child": "bem",
    "farmer": "garo", "horse": "dunu", "tree": "ell", "boat": "sepi", "house": "toma",
    "sees": "vi", "likes": "ami", "follows": "seku", "finds": "tro", "draws": "kesh",
    "paints": "rulo",
}
ADJECTIVES = ["big", "small", "red", "old", "happy", "fast"]
NOUNS = ["cat", "dog", "bird", "fish", "child", "farmer", "horse", "tree", "boat", "house"]
VERBS = ["sees", "likes", "follows", "finds", "draws", "paints"]


def translate(seed: int, count: int = 300) -> list[Row]:
    """Prompt/response: an English sentence and its Kelo translation."""
    rng = random.Random(f"{seed}:translate")

    def phrase() -> list[str]:
        words = [rng.choice(ADJECTIVES)] if rng.random() < 0.6 else []
        words.append(rng.choice(NOUNS))
        article = rng.choice(("the", "a"))
        if article == "a" and words[0][0] in "aeiou":
            article = "an"
        return [article, *words]

    rows = []
    for _ in range(count):
        english = [*phrase(), rng.choice(VERBS), *phrase()]
        rows.append({"prompt": f"English: {' '.join(english)}\nKelo: ",
                     "response": " ".join(KELO[w] for w in english)})
    return rows


SYSTEMS = ["You are a helpful assistant who knows the animals of the valley.",
           "You answer questions about the valley's animals in one sentence."]


def chat(seed: int, count: int = 250) -> list[Row]:
    """Chat records: a system message, then two or three user/assistant turns."""
    rng = random.Random(f"{seed}:chat")
    table = creatures(seed)
    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        if rng.random() < 0.5:
            messages += [{"role": "user", "content": "Hello!"},
                         {"role": "assistant", "content": "Hello! Ask me about an animal."}]
        for creature in rng.sample(table, rng.choice((1, 2))):
            answers = {
                "colour": f"The {creature.name} is {creature.colour}.",
                "home": f"The {creature.name} lives in the {creature.home}.",
                "food": f"The {creature.name} eats {creature.food}.",
                "legs": f"The {creature.name} has {creature.legs} legs.",
            }
            kind = rng.choice(KINDS)
            messages += [{"role": "user", "content": _question(creature, kind)[0]},
                         {"role": "assistant", "content": answers[kind]}]
        rows.append({"messages": messages})
    return rows


# --- the valley: a chat recipe's data (docs/finetuning.md, "A model you can chat with") ---
# Pre-training prose states every fact of the table; the chat dialogues ask about all but one
# trait of each creature (its held-out trait, known only from the prose) in the question
# phrasings of TRAIN_ASKS; the held-out files ask the held-out traits, or known traits in
# phrasings no training dialogue uses (HELD_OUT_ASKS).

ANSWERS = {"colour": "The {n} is {v}.", "home": "The {n} lives in the {v}.",
           "food": "The {n} eats {v}.", "legs": "The {n} has {v} legs."}
PROSE = {
    "colour": ["The {n} is {v}.", "The {n} has {v} fur.", "The colour of the {n} is {v}.",
               "A {v} animal, the {n} is easy to spot."],
    "home": ["The {n} lives in the {v}.", "The {n} makes its home in the {v}.",
             "You can find the {n} in the {v}.", "In the {v} lives the {n}."],
    "food": ["The {n} eats {v}.", "The {n} feeds on {v}.", "The favourite food of the {n} is {v}.",
             "Every day the {n} looks for {v} to eat."],
    "legs": ["The {n} has {v} legs.", "The {n} walks on {v} legs.",
             "The {n} is an animal with {v} legs.", "Count the legs of the {n}: {v}."],
}
TRAIN_ASKS = {
    "colour": ["What colour is the {n}?", "What color is the {n}?", "Which colour is the {n}?",
               "Tell me the colour of the {n}."],
    "home": ["Where does the {n} live?", "Where is the {n} found?", "Where can I find the {n}?",
             "Tell me where the {n} lives."],
    "food": ["What does the {n} eat?", "What food does the {n} like?",
             "What is the favourite food of the {n}?", "Tell me what the {n} eats."],
    "legs": ["How many legs does the {n} have?", "How many legs has the {n}?",
             "Tell me how many legs the {n} has.", "What number of legs does the {n} have?"],
}
FOLLOW_UPS = {"colour": "And what colour is it?", "home": "And where does it live?",
              "food": "And what does it eat?", "legs": "And how many legs does it have?"}
HELD_OUT_ASKS = {
    "colour": ["Do you know what colour the {n} is?", "What is the colour of the {n}?"],
    "home": ["Do you know where the {n} lives?", "What is the home of the {n}?"],
    "food": ["Do you know what the {n} eats?", "What does the {n} feed on?"],
    "legs": ["Do you know how many legs the {n} has?", "How many legs are on the {n}?"],
}
GREETINGS = [("Hello!", "Hello! Ask me about an animal of the valley."),
             ("Hi, who are you?", "I know the animals of the valley. Ask me about one."),
             ("Good morning.", "Good morning! Which animal would you like to know about?")]


# (creature, trait, question); creature None: asked by name even right after the same one
Ask = tuple[Creature | None, str, str]


def _trait(creature: Creature, kind: str) -> str:
    return str(getattr(creature, "colour" if kind == "colour" else kind))


def held_out_traits(seed: int) -> dict[str, str]:
    """Creature name -> the one trait no training dialogue asks about (only prose states it)."""
    rng = random.Random(f"{seed}:valley-held-out")
    return {c.name: rng.choice(KINDS) for c in creatures(seed)}


def valley(seed: int, passes: int = 6) -> list[Row]:
    """Pre-training documents ({"text"}): one paragraph per creature per pass, every trait
    stated in a random one of PROSE's phrasings, sentences in random order. Each creature
    has `passes` paragraphs, so the held-out last documents repeat what training reads."""
    rng = random.Random(f"{seed}:valley")
    rows = []
    for _ in range(passes):
        for creature in rng.sample(creatures(seed), len(creatures(seed))):
            facts = [rng.choice(PROSE[kind]).format(n=creature.name, v=_trait(creature, kind))
                     for kind in KINDS]
            rng.shuffle(facts)
            opening = f"The {creature.name} is an animal of the valley."
            rows.append({"text": " ".join([opening, *facts])})
    return rows


def _dialogue(rng: random.Random, asks: list[Ask],
              about: Creature | None = None) -> Row:
    """A chat: maybe a system message and a greeting, then one question per (creature, kind,
    question) and its answer. A question about the creature of the one before becomes a
    follow-up ("And what does it eat?"); creature None (with `about`) keeps the question."""
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
    if rng.random() < 0.3:
        hello, reply = rng.choice(GREETINGS)
        messages += [{"role": "user", "content": hello}, {"role": "assistant", "content": reply}]
    previous = None
    for creature, kind, question in asks:
        if creature is not None and creature is previous:
            question = FOLLOW_UPS[kind]
        subject = creature or about
        assert subject is not None
        answer = ANSWERS[kind].format(n=subject.name, v=_trait(subject, kind))
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}]
        previous = creature
    return {"messages": messages}


def _asks(rng: random.Random, seed: int) -> list[Ask]:
    """One to four questions of a training dialogue: known traits in training phrasings, a
    creature sometimes asked twice (the second time as a follow-up)."""
    hidden = held_out_traits(seed)
    asks: list[Ask] = []
    for creature in rng.sample(creatures(seed), rng.choice((1, 2))):
        kinds = [k for k in KINDS if k != hidden[creature.name]]
        for kind in rng.sample(kinds, rng.choice((1, 1, 2))):
            asks.append((creature, kind, rng.choice(TRAIN_ASKS[kind]).format(n=creature.name)))
    return asks


def valley_chat(seed: int, count: int = 900, held_out: int = 100) -> list[Row]:
    """Chat fine-tuning records: `count` training dialogues, then `held_out` more (the last
    10%: the validation split of data.val_fraction 0.1), half asking held-out traits and half
    known traits in held-out phrasings (other draws than the valley-unseen-* files)."""
    rng = random.Random(f"{seed}:valley-chat")
    rows = [_dialogue(rng, _asks(rng, seed)) for _ in range(count)]
    return (rows + _held_out_chats(seed, "val", unseen_fact=True, count=held_out // 2)
            + _held_out_chats(seed, "val", unseen_fact=False, count=held_out - held_out // 2))


def _held_out_chats(seed: int, draw: str, *, unseen_fact: bool, count: int) -> list[Row]:
    """Chats whose last answer is scored: a creature's held-out trait asked in a training
    phrasing (unseen_fact), or one of its known traits asked in a held-out phrasing. A third
    first ask a known trait of the same creature, so that the scored question is a follow-up
    (unseen facts) or comes after some history (unseen questions)."""
    rng = random.Random(f"{seed}:valley-{draw}-{'facts' if unseen_fact else 'questions'}")
    hidden = held_out_traits(seed)
    rows = []
    for _ in range(count):
        creature = rng.choice(creatures(seed))
        known = [k for k in KINDS if k != hidden[creature.name]]
        kind = hidden[creature.name] if unseen_fact else rng.choice(known)
        asks: list[Ask] = []
        if rng.random() < 1 / 3:
            first = rng.choice([k for k in known if k != kind])
            asks.append((creature, first, rng.choice(TRAIN_ASKS[first]).format(n=creature.name)))
        phrasings = TRAIN_ASKS if unseen_fact else HELD_OUT_ASKS
        question = rng.choice(phrasings[kind]).format(n=creature.name)
        if asks and not unseen_fact:
            asks.append((None, kind, question))  # asked by name: no follow-up
        else:
            asks.append((creature, kind, question))
        rows.append(_dialogue(rng, asks, creature))
    return rows


def valley_unseen_facts(seed: int) -> list[Row]:
    """Held-out chats whose last answer is a trait only the pre-training prose states."""
    return _held_out_chats(seed, "test", unseen_fact=True, count=150)


def valley_unseen_questions(seed: int) -> list[Row]:
    """Held-out chats whose last question asks a trait the dialogues teach, in a phrasing
    no training dialogue uses."""
    return _held_out_chats(seed, "test", unseen_fact=False, count=150)


POSITIVE = ["great", "wonderful", "excellent", "lovely", "delightful", "superb", "fantastic"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "poor", "disappointing", "horrible"]
SUBJECTS = ["film", "meal", "hotel", "concert", "book", "service", "trip", "game", "show"]
INTENSIFIERS = ["", "really ", "quite ", "very ", "truly "]
# neutral words that carry no sentiment: the label depends on the keyword alone
DISTRACTORS = ["on Sunday", "with my brother", "in the old town", "last week",
               "after work", "near the station", "in the blue building", "at nine"]


def sentiment(seed: int, count: int = 400) -> list[Row]:
    """CSV rows (text, label): a positive or negative keyword amid neutral words."""
    rng = random.Random(f"{seed}:sentiment")
    templates = ["The {s} {d} was {i}{k}.", "I thought the {s} was {i}{k}, {d}.",
                 "{D}, the {s} was {i}{k}.", "What {a} {k} {s} {d}!"]
    rows = []
    for index in range(count):
        label = "pos" if index % 2 == 0 else "neg"
        distractor = rng.choice(DISTRACTORS)
        keyword = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        text = rng.choice(templates).format(
            s=rng.choice(SUBJECTS), d=distractor, D=distractor[0].upper() + distractor[1:],
            i=rng.choice(INTENSIFIERS), k=keyword, a="an" if keyword[0] in "aeiou" else "a",
        )
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


FIRST_NAMES = ["Anna", "Lars", "Maria", "Jonas", "Emma", "Omar", "Yuki", "Priya", "Carlos",
               "Ingrid", "Tomas", "Fatima", "Kofi", "Sofia", "Ravi", "Lena"]
LAST_NAMES = ["Berg", "Novak", "Silva", "Tanaka", "Okafor", "Larsen", "Moreau", "Kowalski",
              "Haddad", "Jensen", "Rossi", "Kumar"]
CITIES = [["Oslo"], ["Lima"], ["Nairobi"], ["Kyoto"], ["Porto"], ["Bergen"], ["Quito"],
          ["New", "Delhi"], ["Buenos", "Aires"], ["Cape", "Town"], ["San", "Diego"],
          ["Rio", "de", "Janeiro"]]


NER_TEMPLATES = ["PER lives in LOC .", "PER moved from LOC to LOC .", "PER met PER in LOC .",
                 "Yesterday PER visited LOC .", "LOC is far from LOC .",
                 "The train to LOC was late for PER ."]


def ner(seed: int, count: int = 300) -> list[Row]:
    """Token/tag records (BIO: B-PER, I-PER, B-LOC, I-LOC, O) from a tiny grammar: each PER
    or LOC slot of a template becomes a name (first, or first and last) or a city."""
    rng = random.Random(f"{seed}:ner")
    rows = []
    for _ in range(count):
        tokens: list[str] = []
        tags: list[str] = []
        # two different people or cities when a sentence needs two
        firsts, cities = rng.sample(FIRST_NAMES, 2), rng.sample(CITIES, 2)
        for word in rng.choice(NER_TEMPLATES).split():
            if word == "PER":
                names = [firsts.pop()]
                names += [rng.choice(LAST_NAMES)] if rng.random() < 0.6 else []
            elif word == "LOC":
                names = cities.pop()
            else:
                tokens.append(word)
                tags.append("O")
                continue
            tokens += names
            tags += [("B-" if i == 0 else "I-") + word for i in range(len(names))]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


# file name -> (builder, what it is for)
EXAMPLES: dict[str, tuple[Callable[[int], list[Row]], str]] = {
    "qa.jsonl": (qa, "question answering (prompt/response): gptkit finetune"),
    "summarize.jsonl": (summarize, "summarisation (prompt/response): gptkit finetune"),
    "translate.jsonl": (translate, "English to Kelo (prompt/response): gptkit finetune"),
    "chat.jsonl": (chat, "multi-turn chat (messages): gptkit finetune"),
    "arithmetic.jsonl": (arithmetic, "sums (prompt/response): gptkit finetune"),
    "tasks.jsonl": (tasks, "questions with references: gptkit eval-generate"),
    "sentiment.csv": (sentiment, "text,label pos/neg: gptkit finetune-classify"),
    "ner.jsonl": (ner, "tokens and BIO tags: gptkit finetune-classify --recipe ner"),
    "valley.jsonl": (valley, "prose about the animals (text): gptkit train --recipe valley"),
    "valley-chat.jsonl": (valley_chat, "dialogues about them: gptkit finetune --recipe "
                          "valley-chat"),
    "valley-unseen-facts.jsonl": (valley_unseen_facts, "held-out traits: gptkit eval-generate"),
    "valley-unseen-questions.jsonl": (valley_unseen_questions, "held-out phrasings: gptkit "
                                      "eval-generate"),
}


def render(name: str, rows: list[Row]) -> str:
    """The file's text: CSV with a header row for .csv, else one JSON object per line."""
    if name.endswith(".csv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_examples(out: str | Path = "examples", *, seed: int = 0,
                   overwrite: bool = False) -> list[Path]:
    """Write every example file into `out` (created if needed); returns their paths.

    Existing files are kept unless `overwrite`: nothing is written if any is in the way.
    """
    folder = Path(out)
    paths = [folder / name for name in EXAMPLES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise GptkitError(
            f"{existing[0]} already exists ({len(existing)} of the example files are in "
            f"{folder}); pass --overwrite to replace them, or choose another --out"
        )
    if folder.exists() and not folder.is_dir():
        raise GptkitError(f"{folder} is a file, not a folder; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    for path, (build, _) in zip(paths, EXAMPLES.values(), strict=True):
        path.write_text(render(path.name, build(seed)), encoding="utf-8")
    return paths
