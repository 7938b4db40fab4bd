"""Plumbing of benchmarks/quality on a tiny BertModel and synthetic tasks (not the real run).

Fine-tune two tasks, merge with `cabs` through `mergekit-multi` at scale 1 and again through
plain `mergekit-yaml` at the chosen scale, and check the record the report is built from.
Two merge processes only, to stay fast; tests/test_bert_merge.py covers MergeKit's own
methods on BERT.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))

from merging import MethodRun  # noqa: E402
from pipeline import SeedSettings, run_seed  # noqa: E402
from report import aggregate, markdown  # noqa: E402
from training import EncodedTask, TrainSettings, encode_split  # noqa: E402

# Merges and training runs: the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

VOCAB = 64


def synthetic_task(name: str, marker: int, seed: int) -> EncodedTask:
    """Label 1 iff token ``marker`` occurs: learnable in one epoch by a tiny encoder."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int):
        ids, labels = [], []
        for row in range(n):
            length = int(torch.randint(4, 10, (1,), generator=generator))
            tokens = torch.randint(5, VOCAB, (length,), generator=generator)
            tokens[tokens == marker] = marker + 1
            label = row % 2
            if label:
                tokens[int(torch.randint(0, length, (1,), generator=generator))] = marker
            ids.append([2, *tokens.tolist(), 3])
            labels.append(label)
        return encode_split(ids, labels)

    return EncodedTask(name, 2, split(32), split(8), split(8))


@pytest.fixture()
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    return BertModel(config)


def test_one_seed_end_to_end(tiny_bert, tmp_path):
    tasks = [synthetic_task("alpha", 7, 1), synthetic_task("beta", 11, 2)]
    runs = [MethodRun("cabs", 0.25, 16)]
    settings = SeedSettings(train=TrainSettings(epochs=1, batch_size=8, body_lr=1e-3),
                            densities=(0.25,), block_size=16, initial_exponents=(0, 1),
                            orders=False)
    record = run_seed(tiny_bert, tasks, settings, seed=0, workdir=tmp_path, runs=runs, log=lambda _: None)

    cabs = record["methods"]["cabs@0.25"]
    assert cabs["rescale_max_abs_diff"] < 1e-5  # base + s * D is what mergekit-yaml writes at s
    scales = sorted(float(s) for s in cabs["val_curve"])
    assert scales[0] < cabs["scale"] < scales[-1]  # the best is interior
    assert set(cabs["test"]) == {"alpha", "beta"}
    kinds = {"magnitude_linear@0.25", "nm_linear@0.25", "cabs@0.25"}
    assert set(record["overlap"]) == kinds | {k + " (encoder layers)" for k in kinds}
    assert record["overlap"]["cabs@0.25"] == 0.0  # 2 x 0.25 <= 1: CA masks are disjoint
    assert record["overlap"]["magnitude_linear@0.25"] > 0.0
    summary = aggregate([record], ["alpha", "beta"])
    text = markdown(summary, [record], ["alpha", "beta"], {"preset": "smoke", "order_density": 0.1})
    assert "| cabs@0.25 |" in text and "| base body + task heads |" in text
