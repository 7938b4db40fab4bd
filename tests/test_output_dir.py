"""Output folders: a tool clears only what it wrote; the demo never deletes a user's file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mergekit_cabs.cli import main
from mergekit_cabs.output_dir import MANIFEST, OutputDirError, owned_output_dir

TOOL = "test tool"


def write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_demo_refuses_the_current_directory_and_leaves_its_files(tmp_path, monkeypatch):
    write(tmp_path / "train.py", "print('mine')")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--out", "."])
    assert result.exit_code != 0
    assert "current directory" in result.output
    assert (tmp_path / "train.py").read_text() == "print('mine')"


def test_the_demo_refuses_a_folder_that_holds_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "current directory" in result.output
    assert (tmp_path / "work").is_dir()


def test_the_demo_refuses_a_non_empty_folder_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "out" / "notes.txt", "keep me")
    result = CliRunner().invoke(main, ["demo", "--out", "out"])
    assert result.exit_code != 0
    assert "not written by mergekit-cabs demo" in result.output
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_a_rerun_removes_the_previous_output_but_not_files_added_since(tmp_path):
    out = tmp_path / "out"
    with owned_output_dir(out, TOOL) as root:
        write(root / "models" / "a.safetensors")
        write(root / "config.yml")
    write(out / "models" / "user-notes.txt", "mine")
    with owned_output_dir(out, TOOL) as root:
        assert not (root / "models" / "a.safetensors").exists()
        assert not (root / "config.yml").exists()
        assert (root / "models" / "user-notes.txt").read_text() == "mine"
        write(root / "fresh.txt")
    recorded = json.loads((out / MANIFEST).read_text())["files"]
    assert recorded == ["fresh.txt"]


def test_files_written_before_a_failure_are_recorded_so_a_rerun_can_clear_them(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with owned_output_dir(out, TOOL) as root:
            write(root / "half-written.bin")
            raise RuntimeError("merge failed")
    with owned_output_dir(out, TOOL) as root:
        assert not (root / "half-written.bin").exists()


def test_an_output_of_another_tool_is_refused(tmp_path):
    with owned_output_dir(tmp_path / "out", "other tool") as root:
        write(root / "x.txt")
    with pytest.raises(OutputDirError, match="written by other tool, not test tool"):
        with owned_output_dir(tmp_path / "out", TOOL):
            pass
    assert (tmp_path / "out" / "x.txt").exists()


def test_an_edited_manifest_never_removes_a_file_outside_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    write(outside, "keep")
    out = tmp_path / "out"
    with owned_output_dir(out, TOOL) as root:
        write(root / "x.txt")
    (out / MANIFEST).write_text(json.dumps({"tool": TOOL, "files": ["../precious.txt", str(outside)]}))
    with owned_output_dir(out, TOOL):
        pass
    assert outside.read_text() == "keep"


def test_a_file_given_as_output_folder_is_refused(tmp_path):
    write(tmp_path / "file.txt")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        with owned_output_dir(tmp_path / "file.txt", TOOL):
            pass


@pytest.mark.slow
def test_the_demo_runs_again_in_its_own_output_and_keeps_a_file_the_user_added(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(main, ["demo", "--out", "demo-output"])
    assert first.exit_code == 0, first.output
    write(tmp_path / "demo-output" / "notes.txt", "mine")
    second = runner.invoke(main, ["demo", "--out", "demo-output"])
    assert second.exit_code == 0, second.output
    assert (tmp_path / "demo-output" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "demo-output" / "merged" / "config.json").is_file()
