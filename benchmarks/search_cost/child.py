"""One measurement in a fresh process; prints a JSON line (wall seconds, peak RSS).

    python -m benchmarks.search_cost.child search|merge|merge_load SPEC.json

Peak RSS is this process's ``VmHWM`` (the high-water mark of its own memory map since
exec, so the parent's pages are not counted).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB: ``VmHWM`` (peak RSS) or ``VmRSS`` (now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return status_mib("VmHWM")


def causal_losses(spec: dict):
    from mergekit_cabs.search.config import read_search_config
    from mergekit_cabs.search.calibration import CausalLMLoss, load_base_tokenizer, read_task

    tokenizer = load_base_tokenizer(read_search_config(spec["config"]).base_path)
    return [CausalLMLoss(read_task(p, tokenizer, spec["max_length"]), spec["batch_size"], "cpu")
            for p in spec["data"]]


def measure_search(spec: dict) -> dict:
    from mergekit_cabs.search.config import read_search_config
    from mergekit_cabs.search.model import CandidateModel

    losses = causal_losses(spec)
    runtime = status_mib("VmRSS")  # imports, tokenizer and texts: before any tensor is read
    started = time.perf_counter()
    candidate = CandidateModel.prepare(read_search_config(spec["config"]))
    prepared = time.perf_counter() - started
    prepare_peak, resident = peak_rss_mib(), status_mib("VmRSS")
    scales = candidate.scales(False)
    assemble, evaluate = [], []
    for step in range(spec["evaluations"]):
        vector = [0.5 + 0.1 * ((step + i) % 10) for i in range(len(scales))]
        t0 = time.perf_counter()
        candidate.assemble(candidate.tensor_weights(scales, vector))
        t1 = time.perf_counter()
        for loss in losses:
            loss(candidate.model)
        assemble.append(t1 - t0)
        evaluate.append(time.perf_counter() - t1)
    return {"prepare_s": prepared, "assemble_s": statistics.median(assemble),
            "losses_s": statistics.median(evaluate),
            "evaluation_s": statistics.median(a + e for a, e in zip(assemble, evaluate)),
            "runtime_rss_mib": runtime, "prepare_peak_rss_mib": prepare_peak, "prepared_rss_mib": resident,
            "compact_bytes": candidate.compact_bytes(),
            "model_bytes": sum(p.numel() * p.element_size() for p in candidate.model.parameters())}


def merge(spec: dict, out: Path) -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergekit_cabs import register_all

    register_all()
    config = MergeConfiguration.model_validate(yaml.safe_load(Path(spec["config"]).read_text()))
    run_merge(config, str(out), options=MergeOptions(copy_tokenizer=False, quiet=True))


def measure_merge(spec: dict, load: bool) -> dict:
    losses = causal_losses(spec) if load else []
    started = time.perf_counter()
    out = Path(spec["workdir"]) / ("merged_load" if load else "merged")
    merge(spec, out)
    if load:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
        for loss in losses:
            loss(model)
    return {"wall_s": time.perf_counter() - started}


def main(mode: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = measure_search(spec) if mode == "search" else measure_merge(spec, load=mode == "merge_load")
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps({"mode": mode, **result}))


if __name__ == "__main__":
    main(*sys.argv[1:])
