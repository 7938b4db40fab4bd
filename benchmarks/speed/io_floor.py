"""The I/O floor of a merge: read every tensor of every input, write one output of the
base's size. No arithmetic. ``python io_floor.py OUT.safetensors BASE_DIR MODEL_DIR...``"""

import sys

from safetensors import safe_open
from safetensors.torch import save_file

out, base, *models = sys.argv[1:]
written = {}
for model in (base, *models):
    with safe_open(f"{model}/model.safetensors", framework="pt") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if model == base:
                written[name] = tensor
save_file(written, out, metadata={"format": "pt"})
