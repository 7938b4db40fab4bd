"""The search cost benchmark runs end to end on tiny models (its numbers mean nothing here)."""

import pytest


@pytest.mark.slow
def test_the_search_cost_benchmark_runs_with_smoke(tmp_path):
    from benchmarks.search_cost.run import main

    record = main(["--smoke", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "results")])
    assert record["summary"]["evaluation_s"] > 0
    assert set(record["results"]) == {"search", "merge", "merge_load"}
    assert (tmp_path / "results" / "smoke.json").is_file()
