"""Long-context tasks generated locally from a seed (no network, no dataset): passkey and needle-in-a-
haystack over a length x depth grid, RULER-style tasks (multi-key and multi-value needles, variable
tracking, common-words extraction, question answering over generated documents) and a two-turn chat
whose answer depends on the first turn.

Each sample is a prompt of about ``length`` tokens (measured with the model's tokenizer) and the strings
its answer must contain; a sample's score is the fraction of them found in the model's answer.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional

# the noise haystack of the passkey literature: repeated, meaningless, easy to tell from a needle
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

WORDS = """apple anchor arrow badge basket beacon blanket bottle bridge bucket button cabin candle canyon
carpet castle cellar chimney circle cliff clock cloud compass copper cotton crystal curtain desert
diamond dolphin dragon drum eagle engine falcon feather fiddle forest fountain garden garlic giant
glacier glove goblet granite harbor harvest helmet hammer island jacket jewel kettle kingdom ladder
lantern lemon library lizard magnet marble meadow mirror monkey mountain needle oasis ocean orchard
oyster paddle palace parrot pebble pepper pillow pirate planet pocket puzzle quarry rabbit river
rocket saddle salmon sandal satchel scarf shadow shovel silver skate spider spoon statue stone
sunset table temple thunder timber tomato tower tunnel turtle umbrella valley velvet violin wagon
walnut window winter wizard wolf yacht zebra""".split()

FIRST_NAMES = """Alice Bruno Clara Daniel Elena Felix Greta Hugo Irene Jonas Karla Liam Maria Nadia Oscar
Paula Quentin Rosa Stefan Tara Ulrich Vera Walter Xenia Yusuf Zoe""".split()
LAST_NAMES = """Adler Brandt Costa Dubois Eriksen Fischer Garcia Hoffmann Ivanova Jensen Keller Lambert
Moreau Novak Olsen Petrov Quinn Rossi Schmidt Torres Urban Vogel Weber Young Zimmermann""".split()
CITIES = """Amsterdam Barcelona Cairo Dublin Edinburgh Florence Geneva Helsinki Istanbul Jakarta Kyoto
Lisbon Madrid Nairobi Oslo Prague Quebec Riga Seoul Toronto Vienna Warsaw Zagreb""".split()
JOBS = """baker carpenter dentist engineer farmer gardener journalist lawyer musician nurse painter pilot
plumber teacher translator""".split()
COLOURS = "red orange yellow green blue purple pink brown black white grey".split()

TASKS = ("passkey", "niah_multikey", "niah_multivalue", "vt", "cwe", "qa", "chat")
# tasks whose needle sits at a chosen depth (the others place their needles by the seed)
DEPTH_TASKS = ("passkey", "niah_multikey", "qa", "chat")
# tokens each task's answer may take
MAX_TOKENS = {"passkey": 10, "niah_multikey": 12, "niah_multivalue": 40, "vt": 30, "cwe": 60, "qa": 10, "chat": 16}


@dataclass
class Sample:
    task: str
    prompt: str                 # the whole prompt (for chat: the first user turn)
    answers: List[str]          # strings the answer must contain
    length: int                 # the target prompt length in tokens
    depth: Optional[float]      # where the needle sits, 0 = start, 1 = end (depth tasks)
    index: int                  # sample number within its (task, length, depth) cell
    followup: Optional[str] = None  # chat: the second user turn, asked after the first is answered
    meta: dict = field(default_factory=dict)


def score(answers: List[str], output: str) -> float:
    """The fraction of answers found in the output (case-insensitive)."""
    out = output.lower()
    return sum(a.lower() in out for a in answers) / len(answers)


class _Haystack:
    """Filler sentences sized to a token budget, with needles inserted at relative depths."""

    def __init__(self, n_tokens: int, count_tokens: Callable[[str], int], unit: str = NOISE):
        per_unit = count_tokens((unit + " ") * 20) / 20
        self.units = [unit] * max(1, int(n_tokens / per_unit))
        self.needles = []  # (depth, text)

    def insert(self, depth: float, text: str) -> None:
        self.needles.append((depth, text))

    def text(self) -> str:
        parts = list(self.units)
        # deepest first, so that earlier insertions do not shift later ones
        for depth, needle in sorted(self.needles, key=lambda n: -n[0]):
            parts.insert(round(depth * len(self.units)), needle)
        return " ".join(parts)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1000000, 9999999))


def _budget(length: int, count_tokens, *texts: str) -> int:
    """Tokens left for the haystack once the fixed texts are in."""
    return max(16, length - sum(count_tokens(t) for t in texts))


def _passkey(rng, length, depth, count_tokens):
    key = str(rng.randint(10000, 99999))
    head = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it."
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "What is the pass key? The pass key is"
    hay = _Haystack(_budget(length, count_tokens, head, needle, question), count_tokens)
    hay.insert(depth, needle)
    return f"{head} {hay.text()} {question}", [key], {}


def _niah_multikey(rng, length, depth, count_tokens):
    keys = rng.sample(WORDS, 4)
    values = [_number(rng) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    head = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
    question = f"What is the special magic number for {keys[0]} mentioned in the provided text? " \
               f"The special magic number for {keys[0]} mentioned in the provided text is"
    hay = _Haystack(_budget(length, count_tokens, head, question, *needles), count_tokens)
    hay.insert(depth, needles[0])
    for needle in needles[1:]:  # distractors: other keys, anywhere
        hay.insert(rng.random(), needle)
    return f"{head} {hay.text()} {question}", [values[0]], {"key": keys[0]}


def _niah_multivalue(rng, length, depth, count_tokens):
    key = rng.choice(WORDS)
    values = [_number(rng) for _ in range(4)]
    needles = [f"One of the special magic numbers for {key} is: {v}." for v in values]
    head = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
    question = f"What are all the special magic numbers for {key} mentioned in the provided text? " \
               f"The special magic numbers for {key} mentioned in the provided text are"
    hay = _Haystack(_budget(length, count_tokens, head, question, *needles), count_tokens)
    for i, needle in enumerate(needles):  # spread over the text, in order
        hay.insert((i + rng.random()) / len(needles), needle)
    return f"{head} {hay.text()} {question}", values, {"key": key}


def _vt(rng, length, depth, count_tokens, hops=4):
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(2 * (hops + 1))]
    value, other = str(rng.randint(10000, 99999)), str(rng.randint(10000, 99999))
    chains = []
    for chain, v in ((names[: hops + 1], value), (names[hops + 1:], other)):  # the second one distracts
        chains.append([f"VAR {chain[0]} = {v}."] + [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, len(chain))])
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text."
    question = f"Question: Find all variables that are assigned the value {value} in the text above. " \
               f"Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} " \
               f"variables are assigned the value {value}, they are:"
    statements = [s for c in chains for s in c]
    hay = _Haystack(_budget(length, count_tokens, head, question, *statements), count_tokens)
    for c in chains:  # each chain in order, its hops spread over the text
        for i, s in enumerate(c):
            hay.insert((i + rng.random()) / len(c), s)
    return f"{head} {hay.text()} {question}", names[: hops + 1], {"value": value}


def _cwe(rng, length, depth, count_tokens, n_common=10):
    words = rng.sample(WORDS, len(WORDS))
    common, rare = words[:n_common], words[n_common:]
    head = "Below is a numbered list of words. In these words, some appear more often than others. " \
           "Memorize the ones that appear most often."
    question = f"Question: What are the {n_common} most common words in the above list? " \
               f"Answer: The top {n_common} words that appear most often in the list are:"
    budget = _budget(length, count_tokens, head, question)
    per_word = count_tokens(" ".join(f"{i + 100}. {w}" for i, w in enumerate(words))) / len(words)
    n_slots = max(n_common * 4, int(budget / per_word))

    def listing_of(n_slots: int) -> List[str]:
        # the common words fill half the list, each rare word appears far less often than any common one
        freq = n_slots // (2 * n_common)
        return common * freq + [rare[i % len(rare)] for i in range(n_slots - n_common * freq)]

    def numbered(items: List[str]) -> str:
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    # the estimate prices three-digit item numbers; longer lists number into four and five digits,
    # which cost more tokens (16k: 9% over the length): shrink the list until it fits the budget
    while n_slots > n_common * 4 and (used := count_tokens(numbered(listing_of(n_slots)))) > budget:
        n_slots = max(n_common * 4, min(n_slots - 1, int(n_slots * budget / used)))
    items = listing_of(n_slots)
    freq = n_slots // (2 * n_common)
    rng.shuffle(items)
    return f"{head} {numbered(items)} {question}", common, {"freq_common": freq}


def _qa(rng, length, depth, count_tokens):
    people = rng.sample([(f, l) for f in FIRST_NAMES for l in LAST_NAMES], 400)

    def document(i, person):
        first, last = person
        return (f"Document {i}: {first} {last} was born in {rng.choice(CITIES)} and works as a "
                f"{rng.choice(JOBS)}. {first} likes the colour {rng.choice(COLOURS)}.")

    target = people[0]
    city = rng.choice(CITIES)
    gold = (f"Document: {target[0]} {target[1]} was born in {city} and works as a {rng.choice(JOBS)}. "
            f"{target[0]} likes the colour {rng.choice(COLOURS)}.")
    head = "Answer the question based on the given documents."
    question = f"Question: In which city was {target[0]} {target[1]} born? Answer: {target[0]} {target[1]} was born in"
    budget = _budget(length, count_tokens, head, question, gold)
    docs = []
    # documents until the budget is spent; past the 399 other people (about 10k tokens) their names come
    # round again with new facts: only the target's name must be unique
    for k in itertools.count():
        doc = document(len(docs) + 1, people[1 + k % (len(people) - 1)])
        budget -= count_tokens(" " + doc)
        if budget < 0:
            break
        docs.append(doc)
    docs.insert(round(depth * len(docs)), gold)
    return f"{head} {' '.join(docs)} {question}", [city], {}


def _chat(rng, length, depth, count_tokens):
    number = str(rng.randint(100, 999))
    colour = rng.choice(COLOURS)
    fact = f"By the way, my lucky number is {number} and my favourite colour is {colour}."
    head = "Here are my notes from today."
    tail = "Please just reply OK, I will ask you something about them next."
    hay = _Haystack(_budget(length, count_tokens, head, fact, tail), count_tokens)
    hay.insert(depth, fact)
    return f"{head} {hay.text()} {tail}", [number], {"followup": "What is my lucky number? Answer with the number."}


_MAKERS = {"passkey": _passkey, "niah_multikey": _niah_multikey, "niah_multivalue": _niah_multivalue,
           "vt": _vt, "cwe": _cwe, "qa": _qa, "chat": _chat}


def make_samples(task: str, length: int, depths, n: int, seed: int, count_tokens: Callable[[str], int]) -> List[Sample]:
    """n samples of task per depth (depth tasks) or n samples (others) of about length tokens."""
    if task not in _MAKERS:
        raise ValueError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
    samples = []
    for depth in (depths if task in DEPTH_TASKS else [None]):
        for i in range(n):
            # depth as a float: depth 1 and depth 1.0 (the CLI's) must give the same sample
            rng = random.Random(f"{seed}/{task}/{length}/{None if depth is None else float(depth)}/{i}")
            prompt, answers, meta = _MAKERS[task](rng, length, 0.5 if depth is None else depth, count_tokens)
            samples.append(Sample(task, prompt, answers, length, depth, i, meta.pop("followup", None), meta))
    return samples
