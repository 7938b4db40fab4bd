import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mergekit_cabs.tiny_models import build_tiny_family

MERGEKIT_YAML = str(Path(sys.executable).with_name("mergekit-yaml"))


def once_per_run(tmp_path_factory, name, make):
    """``(folder, result)``: ``make(folder)`` run once per test run, by whichever xdist worker
    asks first, its result (JSON) read by every later caller. A module fixture runs once per
    worker that runs one of its tests (xdist splits a module): one doing a subprocess merge
    would pay for it twice on 2 cores."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by the workers
    folder, done = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(make(folder)))
    return folder, json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """(base, [fine-tune paths]) of tiny float32 Llama models, absolute paths."""
    return build_tiny_family(tmp_path_factory.mktemp("tiny"), n_finetuned=3, seed=0)


def write_config(path, method, base, models, model_params, shared=None, dtype="float32"):
    config = {
        "merge_method": method,
        "base_model": base,
        "models": [
            {"model": m, "parameters": p} if p is not None else {"model": m}
            for m, p in zip(models, model_params)
        ],
    }
    if dtype is not None:
        config["dtype"] = dtype
    if shared:
        config["parameters"] = shared
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def run_python(code, env=None, **kwargs):
    """``code`` (dedented) in a fresh interpreter, offline: the start-up hook acts as for a user."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600, **kwargs,
    )


def run_mergekit_yaml(config_path, out_path, *flags, env=None):
    """Plain `mergekit-yaml` in a subprocess: no import of ours, the hook must register."""
    return subprocess.run(
        [MERGEKIT_YAML, str(config_path), str(out_path), "--no-copy-tokenizer", *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )


def run_mergekit_yaml_in_process(config_path, out_path, *flags):
    """MergeKit's `mergekit-yaml` command, called in this process: (exit code, error text).

    For the many failing-config cases, where a fresh interpreter per case (~5 s) buys
    nothing: each fails while planning, before MergeKit loads a tensor.
    """
    from click.testing import CliRunner
    from mergekit.scripts.run_yaml import main

    result = CliRunner().invoke(main, [str(config_path), str(out_path), "--no-copy-tokenizer", *flags])
    return result.exit_code, f"{result.output}\n{result.exception!r}\n{result.exception}"


# The host the host tier (`-m host`) runs on: CI runs it once per host venv.
HOST = os.environ.get("MERGEKIT_CABS_TEST_HOST", "mergekit")
HOST_YAML = str(Path(sys.executable).with_name(f"{HOST}-yaml"))


def run_host_yaml(config_path, out_path, *flags, env=None, cwd=None):
    """The host's own `*-yaml` command in a subprocess: nothing of ours imported first."""
    return subprocess.run(
        [HOST_YAML, str(config_path), str(out_path), "--no-copy-tokenizer", *flags],
        capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300,
    )


def run_host_yaml_in_process(config_path, out_path, *flags):
    """The host's `*-yaml` command, called in this process: (exit code, error text)."""
    import importlib

    from click.testing import CliRunner

    main = importlib.import_module(f"{HOST}.scripts.run_yaml").main
    result = CliRunner().invoke(main, [str(config_path), str(out_path), "--no-copy-tokenizer", *flags])
    return result.exit_code, f"{result.output}\n{result.exception!r}\n{result.exception}"
