"""Paired comparisons of two merges on the same test sentences: bootstrap intervals.

Pure numpy, no model code. The inputs are per-sentence correctness arrays of shape
``[seeds, sentences]`` per task, for two methods scored on the same sentences (the test
split is fixed across seeds). The statistic is the difference of mean accuracies, the mean
over tasks of each task's accuracy, averaged over seeds, as the results tables report it.

The bootstrap resamples the two sources of noise a re-run would change: the test sentences
(one resample per task, shared by every seed, since every seed scores the same sentences)
and the fine-tuning seeds (with replacement, when there is more than one). Both methods are
always resampled together (paired), so what is shared between them, such as a hard
sentence, cancels.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


def mean_accuracy_difference(correct_a: Mapping[str, np.ndarray], correct_b: Mapping[str, np.ndarray]) -> float:
    """Mean over seeds of (mean over tasks of accuracy) of A minus the same of B."""
    return float(np.mean([np.mean(correct_a[t], axis=1) - np.mean(correct_b[t], axis=1)
                          for t in correct_a]))


def paired_bootstrap(correct_a: Mapping[str, np.ndarray], correct_b: Mapping[str, np.ndarray],
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = 0) -> dict:
    """Difference A - B of mean accuracy with a percentile bootstrap interval.

    Returns ``mean`` (the observed difference), ``low``, ``high`` and ``real`` (the
    interval excludes 0).
    """
    rng = np.random.default_rng(seed)
    n_seeds = next(iter(correct_a.values())).shape[0]
    # Seed resample as counts per seed: a draw with replacement, one row per replicate.
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples) / n_seeds
    if n_seeds == 1:
        seed_weights = np.ones((resamples, 1))
    replicate = np.zeros(resamples)
    for task in correct_a:
        difference = np.asarray(correct_a[task], dtype=np.float64) - np.asarray(correct_b[task], dtype=np.float64)
        n_sentences = difference.shape[1]
        picks = rng.integers(0, n_sentences, size=(resamples, n_sentences))
        per_seed = difference[:, picks].mean(axis=2).T  # [resamples, seeds]
        replicate += (per_seed * seed_weights).sum(axis=1)
    replicate /= len(correct_a)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicate, [tail, 1.0 - tail])
    return {"mean": mean_accuracy_difference(correct_a, correct_b), "low": float(low),
            "high": float(high), "real": bool(low > 0.0 or high < 0.0)}


def correctness_array(per_seed_bits: list[str]) -> np.ndarray:
    """``["0110...", ...]`` (one string per seed, as results.json stores them) -> bool [seeds, n]."""
    return np.array([[c == "1" for c in bits] for bits in per_seed_bits], dtype=bool)
