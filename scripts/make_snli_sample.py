"""Generate a small SNLI-format sample whose labels follow a rule a sentence-pair model can learn.

    python scripts/make_snli_sample.py                 # writes data/snli_sample/{train,dev,test}.jsonl

Sentences are random words over random binary trees (premise ≈ 14 tokens, hypothesis ≈ 8, like
SNLI's 14.1 and 8.3). Each premise is about one topic (a few words from one of six topic groups among
filler words). The hypothesis mentions one or two topic words and decides the label:
    neutral        its topic words come from another group than the premise's
    contradiction  same group, and it contains a negation word
    entailment     same group, no negation
So the label needs both sentences: neither alone predicts it above chance. A few pairs carry the gold
label '-' (no consensus), which loaders must drop, as in SNLI. Same seed, same files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnnfast.data.trees import random_transitions, transitions_to_parse  # noqa: E402

TOPICS = {
    "animals": "dog cat horse bird cow",
    "vehicles": "car bus bike train boat",
    "food": "bread apple soup pizza cake",
    "music": "guitar drum piano song band",
    "sports": "ball soccer tennis golf race",
    "weather": "rain snow wind storm fog",
}
FILLER = (
    "a the an some two three man woman child boy girl people group person is are was sits stands walks "
    "runs looks holds near on in at with by under over of outside inside small big old young red blue "
    "green happy tall busy quiet street park beach field city room table chair wall door window day"
).split()
NEGATION = "not no never nobody".split()
LABELS = ("entailment", "neutral", "contradiction")


def _length(rng: random.Random, mean: float, sd: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.gauss(mean, sd))))


def _sentence(rng: random.Random, n: int, topic_words: list[str], extra: list[str]) -> list[str]:
    words = [rng.choice(FILLER) for _ in range(n - len(topic_words) - len(extra))]
    for w in topic_words + extra:
        words.insert(rng.randrange(len(words) + 1), w)
    return words


def pair(rng: random.Random) -> dict:
    groups = list(TOPICS)
    k = rng.randrange(len(groups))
    own = TOPICS[groups[k]].split()
    label = rng.choice(LABELS)
    n_p = _length(rng, 14, 5, 4, 40)
    premise = _sentence(rng, n_p, rng.sample(own, rng.randint(2, 4)), [])
    n_h = _length(rng, 8, 3, 3, 25)
    if label == "neutral":
        other = TOPICS[groups[rng.choice([j for j in range(len(groups)) if j != k])]].split()
        topic = rng.sample(other, rng.randint(1, 2))
        neg = [rng.choice(NEGATION)] if rng.random() < 0.3 else []
    else:
        topic = rng.sample(own, rng.randint(1, 2))
        neg = [rng.choice(NEGATION)] if label == "contradiction" else []
    hypothesis = _sentence(rng, max(n_h, len(topic) + len(neg)), topic, neg)
    gold = "-" if rng.random() < 0.01 else label
    return {
        "gold_label": gold,
        "sentence1_binary_parse": transitions_to_parse(premise, random_transitions(len(premise), rng)),
        "sentence2_binary_parse": transitions_to_parse(hypothesis, random_transitions(len(hypothesis), rng)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "snli_sample"))
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate((("train", a.train), ("dev", a.dev), ("test", a.test))):
        rng = random.Random(a.seed * 1000 + i)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(pair(rng)) + "\n")
        print(f"wrote {n} pairs to {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
