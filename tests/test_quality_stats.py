"""benchmarks/quality/stats.py: paired bootstrap over test sentences and seeds."""

import numpy as np
import pytest

from benchmarks.quality.stats import correctness_array, mean_accuracy_difference, paired_bootstrap


def bernoulli(rate: float, shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < rate


def test_difference_is_mean_over_tasks_and_seeds():
    a = {"x": np.array([[1, 1, 1, 1], [1, 1, 0, 0]]), "y": np.array([[1, 0, 0, 0], [0, 0, 0, 0]])}
    b = {"x": np.zeros((2, 4)), "y": np.zeros((2, 4))}
    # seed 0: (1 + 0.25) / 2 = 0.625; seed 1: (0.5 + 0) / 2 = 0.25; mean 0.4375
    assert mean_accuracy_difference(a, b) == 0.4375


def test_identical_methods_give_a_zero_interval():
    a = {"x": bernoulli(0.7, (2, 500), 0)}
    result = paired_bootstrap(a, a, resamples=200)
    assert result == {"mean": 0.0, "low": 0.0, "high": 0.0, "real": False}


def test_a_large_gap_on_1000_sentences_is_real():
    a = {"x": bernoulli(0.80, (1, 1000), 1)}
    b = {"x": bernoulli(0.70, (1, 1000), 2)}
    result = paired_bootstrap(a, b, resamples=500)
    assert result["real"] and 0.0 < result["low"] < result["mean"] < result["high"]


def test_a_one_point_gap_on_100_sentences_is_not_real():
    b = {"x": bernoulli(0.75, (1, 100), 3)}
    a = {"x": b["x"].copy()}
    a["x"][0, np.flatnonzero(~b["x"][0])[0]] = True  # A fixes one of B's errors: +1 point
    result = paired_bootstrap(a, b, resamples=500)
    assert result["mean"] == pytest.approx(0.01) and result["low"] <= 0.0 and not result["real"]


def test_pairing_narrows_the_interval_of_correlated_methods():
    b = {"x": bernoulli(0.6, (1, 400), 4)}
    flips = bernoulli(0.05, (1, 400), 5)
    a = {"x": b["x"] ^ flips}  # A disagrees with B on ~5 % of sentences only
    independent = {"x": bernoulli(0.6, (1, 400), 6)}
    paired_width = np.subtract(*[paired_bootstrap(a, b, resamples=500)[k] for k in ("high", "low")])
    unpaired_width = np.subtract(*[paired_bootstrap(independent, b, resamples=500)[k] for k in ("high", "low")])
    assert paired_width < unpaired_width / 2


def test_seed_disagreement_widens_the_interval():
    same = np.ones((3, 200), dtype=bool)
    b = {"x": np.zeros((3, 200), dtype=bool)}
    varied = same.copy()
    varied[1:, :] = False  # A is right everywhere on seed 0, nowhere on seeds 1 and 2
    steady = paired_bootstrap({"x": same}, b, resamples=500)
    seed_noise = paired_bootstrap({"x": varied}, b, resamples=500)
    assert steady["high"] - steady["low"] == 0.0
    assert seed_noise["high"] - seed_noise["low"] > 0.3


def test_correctness_strings_round_trip():
    assert correctness_array(["0110", "1000"]).tolist() == [[False, True, True, False], [True, False, False, False]]
