"""The I/O floor of a merge: read every tensor of every input, write one output of the
base's size, no arithmetic.

    python -m benchmarks.speed.io_floor OUT.safetensors BASE_DIR MODEL_DIR...
"""

import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def read_all(model_dir: str) -> dict:
    """Every tensor of every safetensors shard in ``model_dir``, read into memory."""
    tensors = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def main(out: str, base: str, *models: str) -> None:
    written = read_all(base)
    for model in models:
        read_all(model)  # read and dropped: a merge must read it, and keeps only its result
    save_file(written, out, metadata={"format": "pt"})


if __name__ == "__main__":
    main(*sys.argv[1:])
