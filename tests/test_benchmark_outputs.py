"""The benchmarks delete only what they created: their work folders are theirs (a manifest of
what they wrote) and each merge output is new when the merge starts (no benchmark is run here)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import benchmarks.speed.profile_merge as profile_merge
import benchmarks.speed.run as speed_run
import benchmarks.speed.timing as speed_timing
from benchmarks.speed.inputs import Checkpoints
from benchmarks.quality.merging import run_mergekit_multi, run_mergekit_yaml
from benchmarks.quality.pipeline import SeedContext, SeedSettings, run_seed
from benchmarks.quality.training import TrainSettings
from mergekit_cabs.output_dir import OutputDirError


def write(path: Path, text: str = "mine") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny_checkpoints(bytes_per_model: int = 1) -> Checkpoints:
    return Checkpoints("/models/base", ["/models/ft1"], 1, 1, bytes_per_model, [0.4])


def test_the_speed_benchmark_refuses_a_scratch_folder_it_did_not_write_before_building_anything(tmp_path):
    notes = write(tmp_path / "work" / "scratch" / "notes.txt")
    with pytest.raises(OutputDirError, match="not written by benchmarks.speed.run"):
        speed_run.main(["--small", "--layers", "1", "--large-vocab", "", "--work", str(tmp_path / "work"),
                        "--out", str(tmp_path / "out")])
    assert notes.read_text() == "mine"
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["scratch"]  # no checkpoints built
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variant,output", [("cabs@64", "merged"), ("io_floor", "io_floor.safetensors")])
def test_a_speed_merge_output_that_exists_before_the_run_is_refused_and_kept(tmp_path, variant, output):
    mine = write(tmp_path / output / "mine.txt") if output == "merged" else write(tmp_path / output)
    with pytest.raises(OutputDirError, match="exists before the merge"):
        speed_timing.variant_command(variant, tiny_checkpoints(), tmp_path, [])
    assert mine.read_text() == "mine"


def test_a_speed_run_removes_the_merge_output_it_measured_and_nothing_else(tmp_path, monkeypatch):
    def child_writes_a_model(command, log, env):  # mergekit-yaml CONFIG OUT ...
        out = Path(command[2])
        out.mkdir()
        save_file({"w": torch.zeros(1)}, str(out / "model.safetensors"))
        return 1.0, 10.0

    monkeypatch.setattr(speed_timing, "measure", child_writes_a_model)
    (tmp_path / "logs").mkdir()
    notes = write(tmp_path / "notes.txt")
    run = speed_timing.run_variant("cabs@64", 0, 0, tiny_checkpoints(), tmp_path, [], {})
    assert run.output_bytes > 0
    assert not (tmp_path / "merged").exists()
    assert notes.read_text() == "mine"


def test_the_profiler_merges_in_a_folder_it_made_and_removes_only_that(tmp_path):
    notes = write(tmp_path / "notes.txt")
    with profile_merge.scratch_folder(tmp_path) as scratch:
        scratch = Path(scratch)
        assert scratch.parent == tmp_path and not any(scratch.iterdir())
        write(scratch / "merged" / "model.safetensors")
    assert not scratch.exists()
    assert notes.read_text() == "mine"


def test_a_quality_seed_folder_it_did_not_write_is_refused_before_any_training(tmp_path):
    notes = write(tmp_path / "seed0" / "notes.txt")
    settings = SeedSettings(train=TrainSettings(epochs=1), densities=(0.25,), block_size=16)
    with pytest.raises(OutputDirError, match="not written by benchmarks.quality.run"):
        run_seed(None, [], settings, seed=0, workdir=tmp_path / "seed0", runs=[], log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "seed0").iterdir()) == ["notes.txt"]
    assert notes.read_text() == "mine"


def test_a_quality_merge_output_that_exists_before_the_merge_is_refused_and_kept(tmp_path):
    single = write(tmp_path / "one" / "merged" / "mine.txt")
    batched = write(tmp_path / "batch" / "multi" / "merge-0" / "mine.txt")
    with pytest.raises(OutputDirError, match="exists before the merge"):
        run_mergekit_yaml({"merge_method": "cabs"}, tmp_path / "one", seed=0)
    with pytest.raises(OutputDirError, match="exists before the merge"):
        run_mergekit_multi({"cabs@0.1": {"merge_method": "cabs"}}, tmp_path / "batch", seed=0)
    assert single.read_text() == "mine" and batched.read_text() == "mine"


def test_taking_a_quality_merge_removes_its_folder_and_nothing_beside_it(tmp_path):
    output = tmp_path / "merge" / "cabs@0.1" / "merged"
    output.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(output / "model.safetensors"))
    notes = write(tmp_path / "merge" / "cabs@0.1" / "notes.txt")
    ctx = SeedContext(0, tmp_path, [], "", [], {}, None, {})
    assert torch.equal(ctx.take(output)["w"], torch.ones(2))
    assert not output.exists()
    assert notes.read_text() == "mine"
