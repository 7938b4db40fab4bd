"""The search cost benchmark runs end to end on tiny models (its numbers mean nothing here)."""

from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.benchmark
def test_the_search_cost_benchmark_runs_with_smoke(tmp_path):
    from benchmarks.search_cost.run import main

    record = main(["--smoke", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "results")])
    assert record["summary"]["evaluation_s"] > 0
    assert set(record["results"]) == {"search", "merge", "merge_load"}
    assert (tmp_path / "results" / "smoke.json").is_file()


@pytest.mark.slow
@pytest.mark.benchmark
def test_the_search_cost_benchmark_measures_given_checkpoints_and_calibration_files(tmp_path):
    import json

    import torch

    from benchmarks.search_cost.run import main
    from mergekit_cabs.tiny_models import build_tiny_family, save_tiny_tokenizer

    base, tuned = build_tiny_family(tmp_path / "family", n_finetuned=3, dtype=torch.bfloat16)
    save_tiny_tokenizer(base, 64)
    data = []
    for task in range(3):
        path = tmp_path / f"task{task}.jsonl"
        path.write_text("".join(json.dumps({"text": " ".join(f"w{3 + (task + j) % 60}" for j in range(9))}) + "\n"
                                for _ in range(4)))
        data.append(str(path))
    record = main(["--base", base, "--models", *tuned, "--data", *data, "--density", "0.3", "--block-size", "16",
                   "--label", "given", "--evaluations", "2",
                   "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "results")])

    config = (tmp_path / "work" / "cabs.yml").read_text()
    assert config.count("density: 0.3") == 3 and "block_size: 16" in config
    assert record["spec"]["data"] == data
    assert record["summary"]["model"] == f"{base} + 3 fine-tunes"
    assert (tmp_path / "results" / "given.json").is_file()


def test_the_search_cost_benchmark_wants_base_models_and_data_together(capsys):
    from benchmarks.search_cost.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--base", "b", "--models", "m"])
    assert "--base, --models and --data go together" in capsys.readouterr().err


def test_the_finetunes_preset_reads_the_quality_regimes_models_at_64_256():
    from benchmarks.search_cost.run import parse_args

    args = parse_args(["--preset", "finetunes", "--batch-size", "4"])
    assert args.from_quality_work and args.label == "smollm2_finetunes"
    assert (args.density, args.block_size, args.max_length, args.batch_size) == (0.25, 256, 128, 4)


def test_the_quality_regimes_fine_tunes_are_taken_in_task_order_and_only_when_finished(tmp_path):
    from benchmarks.quality.causal_lm.tasks import TASKS
    from benchmarks.search_cost.run import quality_work_inputs

    for task in reversed(TASKS):
        (tmp_path / "finetunes" / f"{task}-seed1-abc").mkdir(parents=True)
        (tmp_path / "finetunes" / f"{task}-seed1-abc" / "fine_tune.json").write_text("{}")
    (tmp_path / "finetunes" / f"{TASKS[0]}-seed1-def.partial").mkdir()  # unfinished: not a candidate
    base, tuned, data = quality_work_inputs(tmp_path)
    assert base == str(tmp_path / "base")
    assert [Path(t).name for t in tuned] == [f"{task}-seed1-abc" for task in TASKS]
    assert [Path(d).stem for d in data] == list(TASKS)
    (tmp_path / "finetunes" / f"{TASKS[0]}-seed1-xyz").mkdir()
    (tmp_path / "finetunes" / f"{TASKS[0]}-seed1-xyz" / "fine_tune.json").write_text("{}")
    with pytest.raises(SystemExit, match="2 finished fine-tunes"):
        quality_work_inputs(tmp_path)
