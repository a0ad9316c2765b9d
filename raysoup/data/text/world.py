"""The text miniature's generated task: short templated sentences about one of four topics.

Each sentence has two words of its topic and one distractor from another topic, in one of the
training templates; the label is the topic. The test split is drawn like train; the shift
splits change one thing each:

- `synonym`: one of the two topic words is replaced by a synonym that training never shows
  (the pre-training corpus does, in the same contexts: what pre-training gives is what
  carries); a model that ignores it is left with one topic word against the distractor;
- `typo`: a letter of one topic word swapped or dropped (WordPiece splits the misspelling
  into pieces), again against the distractor;
- `template`: sentence frames that training never shows.

`mlm_corpus` is the broader text the shipped base was pre-trained on (every word, every
template). Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np

from raysoup.config import TextWorldCfg

CLASSNAMES = ["sports", "food", "weather", "music"]
WORDS = {  # topic words seen in training, and their synonyms (shift, pre-training)
    "sports": (["game", "team", "match", "goal", "player", "coach", "score", "stadium"],
               ["contest", "squad", "fixture", "striker", "athlete", "trainer", "tally",
                "arena"]),
    "food": (["soup", "bread", "cheese", "dinner", "kitchen", "recipe", "salad", "pasta"],
             ["broth", "loaf", "dairy", "supper", "galley", "dish", "greens", "noodles"]),
    "weather": (["rain", "storm", "cloud", "wind", "snow", "sun", "forecast", "fog"],
                ["drizzle", "tempest", "overcast", "gale", "sleet", "sunshine", "outlook",
                 "mist"]),
    "music": (["song", "guitar", "band", "concert", "melody", "drum", "singer", "album"],
              ["tune", "violin", "orchestra", "gig", "harmony", "percussion", "vocalist",
               "record"]),
}
ADJECTIVES = ["big", "small", "new", "old", "loud", "quiet", "long", "short", "bright", "late",
              "strange", "famous"]
VERBS = ["was", "seemed", "looked", "felt", "became", "stayed"]
TEMPLATES = [  # {a} {b}: topic words, {d}: the distractor, {j}/{k}: adjectives, {v}: a verb
    "the {j} {a} {v} {k} after the {b} and the {d}",
    "my {a} and the {b} {v} {j} near the {d}",
    "everyone said the {d} {v} {j} but the {a} and the {b} {v} {k}",
    "a {j} {a} with a {k} {b} {v} next to a {d}",
    "their {d} {v} {j} while our {a} met a {k} {b}",
]
SHIFT_TEMPLATES = [
    "why did the {a} feel so {j} when the {b} and a {d} arrived",
    "{a} {b} {d} {j} {k}",
    "nobody expected that a {j} {d} would follow the {a} of the {b}",
]
SHIFTS = ("synonym", "typo", "template")
LABEL_NOISE = 0.05  # train labels flipped at random: ingredients then differ in what they fit


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(0, len(word) - 1))
    if rng.random() < 0.5:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap two letters
    return word[:i] + word[i + 1:]  # drop one


def _sentence(rng: np.random.Generator, label: int, templates: list[str], vocab: int | None,
              typo: bool = False) -> str:
    """vocab 0: training words, 1: synonyms, None: either, word by word (pre-training)."""
    core, syn = WORDS[CLASSNAMES[label]]
    other = CLASSNAMES[(label + 1 + int(rng.integers(0, len(CLASSNAMES) - 1))) % len(CLASSNAMES)]
    a, b = (str(w) for w in rng.choice(core + syn if vocab is None else core, size=2,
                                       replace=False))
    d = str(rng.choice(WORDS[other][0]))
    if vocab == 1:  # one topic word becomes a synonym: it must outweigh the distractor
        a = syn[core.index(a)]
    if typo:
        a = _typo(a, rng)
    j, k = rng.choice(ADJECTIVES, size=2, replace=False)
    return str(rng.choice(templates)).format(a=a, b=b, d=d, j=j, k=k, v=rng.choice(VERBS))


def split_rows(cfg: TextWorldCfg, split: str) -> dict[str, list]:
    """{"key", "sentence", "label"} of one split (train, test or a shift)."""
    stream = ["train", "test", *SHIFTS].index(split)
    rng = np.random.default_rng([cfg.seed, stream])
    per_class = {"train": cfg.train_per_class, "test": cfg.test_per_class}.get(
        split, cfg.shift_per_class)
    templates = SHIFT_TEMPLATES if split == "template" else TEMPLATES
    vocab = 1 if split == "synonym" else 0
    labels = np.repeat(np.arange(len(CLASSNAMES)), per_class)
    rng.shuffle(labels)
    sentences = [_sentence(rng, int(y), templates, vocab, typo=split == "typo") for y in labels]
    if split == "train":
        flip = rng.random(len(labels)) < LABEL_NOISE
        labels = np.where(flip, rng.integers(0, len(CLASSNAMES), len(labels)), labels)
    return {"key": [f"{split}-{i:06d}" for i in range(len(labels))], "sentence": sentences,
            "label": [CLASSNAMES[int(y)] for y in labels]}


MLM_TYPOS = 0.15  # share of pre-training sentences with misspelt topic words (web text has some)


def mlm_corpus(n: int, seed: int = 0) -> list[str]:
    """Pre-training sentences, broader than the task: a topic's training words and synonyms
    mixed in one sentence, every template, some typos; no labels."""
    rng = np.random.default_rng([seed, 99])
    templates = TEMPLATES + SHIFT_TEMPLATES
    return [_sentence(rng, int(rng.integers(0, len(CLASSNAMES))), templates, vocab=None,
                      typo=bool(rng.random() < MLM_TYPOS)) for _ in range(n)]


def words() -> list[str]:
    """Every whole word of the world (the shipped base's vocabulary is built over these)."""
    out = set(ADJECTIVES) | set(VERBS)
    for core, syn in WORDS.values():
        out |= set(core) | set(syn)
    for t in TEMPLATES + SHIFT_TEMPLATES:
        out |= {w for w in t.split() if not w.startswith("{")}
    return sorted(out)
