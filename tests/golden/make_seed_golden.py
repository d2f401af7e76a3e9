"""Regenerate tests/golden/seed_scconv.safetensors from a copy of the unofficial ScConv code.

The ``seed`` variant reproduces the unofficial ScConv implementation that circulates in blog
posts (its ``ScConv`` class). Save a copy of that code as a Python file anywhere, then run once,
by hand, from the repository root:

    python tests/golden/make_seed_golden.py PATH_TO_THE_COPY.py

It runs that ``ScConv`` (unchanged, defects included) on fixed inputs and stores, per case, the
module's state_dict (under its own key names), the input and the output, with the copy's SHA-256
in the file's metadata. The tests load this file; they never import the unofficial code. Size
cap: 1 MB.
"""
import hashlib
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CASES = {  # name: (channels, batch, height, width, torch seed)
    "c32": (32, 2, 12, 12, 0),
    "c64": (64, 2, 8, 10, 1),
}
SOURCE = "the unofficial ScConv implementation that circulates in blog posts (its ScConv class)"


def main(code_path: str) -> None:
    spec = importlib.util.spec_from_file_location("unofficial_scconv", code_path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    tensors = {}
    for name, (c, n, h, w, s) in CASES.items():
        torch.manual_seed(s)
        module = code.ScConv(c).eval()
        x = torch.randn(n, c, h, w)
        with torch.no_grad():
            y = module(x)
        for key, value in module.state_dict().items():
            tensors[f"{name}.state_dict.{key}"] = value.contiguous()
        tensors[f"{name}.input"] = x
        tensors[f"{name}.output"] = y
    out = Path(__file__).with_name("seed_scconv.safetensors")
    digest = hashlib.sha256(Path(code_path).read_bytes()).hexdigest()
    save_file(tensors, str(out), metadata={"source": SOURCE, "source_sha256": digest, "torch": torch.__version__})
    size = out.stat().st_size
    assert size < 1_000_000, f"golden file too large: {size} bytes"
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
