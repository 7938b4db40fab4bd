"""Plain MergeKit finds our methods with nothing imported by the user, and stays usable if a
plugin breaks. Every check runs in a fresh interpreter: the hook acts at start-up. (Each
import order, the hook switched off, ``import mergekit_cabs`` first and ``run_merge``: the
host tier, tests/test_hosts.py, on every host.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_mergekit_yaml, run_mergekit_yaml_in_process, run_python, write_config
from mergekit_cabs.methods import METHOD_TABLE
from mergekit_cabs.tiny_models import load_state

NAMES = sorted(info.name for info in METHOD_TABLE)
BIN = Path(sys.executable).parent



# Run after an entry point or import order: are our names registered, and do MergeKit's
# planning checks refuse an unknown key? Nothing of ours is imported before both answers.
PROBE = """
from mergekit import merge_methods
import mergekit.plan
names = sorted(m.spec.name for m in merge_methods.registered_methods())
try:
    mergekit.plan.resolve_parameters(
        merge_methods.get("cabs").spec, tensor_name="w", inputs={"m": "w"},
        sources=lambda model: [{"density": 0.5, "n_val": 2}], base_model=None)
    checked = "unchecked"
except Exception as error:
    checked = type(error).__name__
print(names)
print(checked)
"""


def assert_registered_and_checked(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "failed to load" not in result.stderr, result.stderr[-3000:]
    names, checked = result.stdout.strip().split("\n")[-2:]
    assert set(NAMES) <= set(eval(names))
    assert checked == "MergeConfigError"


@pytest.mark.slow
def test_spawned_child_process_registers(tmp_path):
    (tmp_path / "probe_module.py").write_text(
        "def probe():\n    import io, contextlib\n    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        f"        exec({PROBE!r}, {{}})\n    return out.getvalue()\n")
    result = run_python("""
        import multiprocessing
        import probe_module
        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print(pool.apply(probe_module.probe), end="")
    """, env={"PYTHONPATH": str(tmp_path)})
    assert_registered_and_checked(result)


@pytest.mark.slow
def test_changed_mergekit_internals_are_an_error_at_registration_not_a_downgrade():
    result = run_python("""
        import mergekit.parameter_resolver as resolver, mergekit.plan as plan
        def resolve_parameters(spec, *, tensor_name, inputs, sources, base_model=None, t=0, extra=None):
            pass
        resolver.resolve_parameters = plan.resolve_parameters = resolve_parameters
        from mergekit import merge_methods
        from mergekit_cabs import register_all
        try:
            register_all()
        except Exception as error:
            print(type(error).__name__, error)
        print("cabs" in [m.spec.name for m in merge_methods.registered_methods()])
    """, env={"MERGEKIT_CABS_NO_HOOK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    message, registered = result.stdout.strip().split("\n")
    assert message.startswith("IncompatibleMergeKit mergekit-cabs cannot attach to MergeKit 0.1.5")
    assert "mergekit.parameter_resolver.resolve_parameters is defined in __main__" in message
    assert "mergekit-cabs merge CONFIG OUT" in message
    assert registered == "False"


def test_interpreter_start_imports_neither_torch_nor_mergekit():
    result = run_python("""
        import sys
        print(sorted(m for m in ("torch", "mergekit", "mergekit_cabs", "mergekit_cabs_hook")
                     if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['mergekit_cabs_hook']"


@pytest.mark.slow
def test_importing_mergekit_merge_methods_registers_every_name():
    result = run_python("""
        from mergekit import merge_methods
        print(sorted(m.spec.name for m in merge_methods.registered_methods()))
    """)
    assert result.returncode == 0, result.stderr
    assert set(NAMES) <= set(eval(result.stdout))


@pytest.mark.slow
def test_kernels_import_neither_mergekit_nor_transformers():
    result = run_python("""
        import sys
        import mergekit_cabs.kernels, mergekit_cabs.kernels.compiled, mergekit_cabs.keep_counts
        print(sorted(m for m in ("mergekit", "transformers") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_broken_plugin_warns_and_mergekit_still_merges(tiny_family, tmp_path):
    plugins = tmp_path / "plugins"
    dist_info = plugins / "broken_plugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[mergekit.merge_methods]\nbroken = broken_plugin:register\n")
    (plugins / "broken_plugin.py").write_text("raise ImportError('simulated plugin failure')\n")
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "task_arithmetic", base, models[:2], [{"weight": 0.5}] * 2)
    result = run_mergekit_yaml(tmp_path / "c.yml", tmp_path / "out",
                               env={"PYTHONPATH": str(plugins)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "merge-method plugin 'broken'" in result.stderr
    assert "simulated plugin failure" in result.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_python_m_mergekit_cabs_is_mergekit_yaml_with_all_its_flags():
    result = subprocess.run([sys.executable, "-m", "mergekit_cabs", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("CONFIG_FILE", "OUT_PATH", "--cuda", "--out-shard-size", "--random-seed"):
        assert flag in result.stdout


@pytest.mark.slow
def test_mergekit_cabs_command_lists_its_subcommands():
    result = subprocess.run([str(BIN / "mergekit-cabs"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("merge", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_console_script_wraps_mergekit_yaml_without_the_hook(tiny_family, tmp_path):
    base, models = tiny_family
    params = [{"weight": 1.0, "density": 0.25}] * 2
    write_config(tmp_path / "c.yml", "cabs", base, models[:2], params, {"block_size": 16})
    via_wrapper = subprocess.run(
        [str(BIN / "mergekit-cabs"), "merge", str(tmp_path / "c.yml"), str(tmp_path / "a"),
         "--no-copy-tokenizer"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MERGEKIT_CABS_NO_HOOK": "1"})
    assert via_wrapper.returncode == 0, via_wrapper.stderr[-2000:]
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "b")  # the plain command
    assert code == 0, error[-2000:]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_mergekit_multi_runs_a_chain_of_our_methods(tiny_family, tmp_path):
    base, models = tiny_family
    first = {
        "name": "first",
        "merge_method": "cabs",
        "base_model": base,
        "models": [{"model": m, "parameters": {"density": 0.25}} for m in models[:2]],
        "parameters": {"block_size": 16},
        "dtype": "float32",
    }
    final = {
        "merge_method": "ca_ties",
        "base_model": base,
        "models": [{"model": "first", "parameters": {"density": 0.5}},
                   {"model": models[2], "parameters": {"density": 0.5}}],
        "dtype": "float32",
    }
    (tmp_path / "multi.yml").write_text(yaml.safe_dump_all([first, final], sort_keys=False))
    result = subprocess.run(
        [str(BIN / "mergekit-multi"), str(tmp_path / "multi.yml"),
         "--intermediate-dir", str(tmp_path / "steps"), "--out-path", str(tmp_path / "out"),
         "--no-copy-tokenizer"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_state(tmp_path / "steps" / "first").keys() == load_state(tmp_path / "out").keys()


@pytest.mark.slow
def test_python_m_run_yaml_merges_with_our_method(tiny_family, tmp_path):
    base, models = tiny_family
    params = [{"weight": 1.0, "density": 0.25}] * 2
    write_config(tmp_path / "c.yml", "cabs", base, models[:2], params, {"block_size": 16})
    result = subprocess.run(
        [sys.executable, "-m", "mergekit.scripts.run_yaml", str(tmp_path / "c.yml"),
         str(tmp_path / "out"), "--no-copy-tokenizer"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_merge_tensors_accepts_our_names_by_string():
    result = run_python("""
        import torch
        from mergekit.merge_methods.api import merge_tensors
        g = torch.Generator().manual_seed(0)
        base = torch.randn(4, 64, generator=g)
        tuned = [base + torch.randn(4, 64, generator=g) for _ in range(2)]
        out = merge_tensors([base, *tuned], "cabs", base_index=0, name="w",
                            parameters={"weight": [1.0, 1.0], "density": [0.25, 0.25],
                                        "block_size": 16})
        moved = (out != base).reshape(-1, 16).sum(1)
        print(out.shape == base.shape, int(moved.max()) <= 8)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True True"
