"""Regenerate tests/golden/seed_scconv.safetensors from the seed document's code.

Run once, by hand, from the repository root with ../shared beside it:

    python tests/golden/make_seed_golden.py ../shared/seed/seed_scconv.py

It runs the seed's ``ScConv`` (unchanged, defects included) on fixed inputs and stores, per
case, the seed module's state_dict (under the seed's own key names), the input and the
output. The tests load this file; they never import the seed code. Size cap: 1 MB.
"""
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CASES = {  # name: (channels, batch, height, width, torch seed)
    "c32": (32, 2, 12, 12, 0),
    "c64": (64, 2, 8, 10, 1),
}


def main(seed_path: str) -> None:
    spec = importlib.util.spec_from_file_location("seed_scconv", seed_path)
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    tensors = {}
    for name, (c, n, h, w, s) in CASES.items():
        torch.manual_seed(s)
        module = seed.ScConv(c).eval()
        x = torch.randn(n, c, h, w)
        with torch.no_grad():
            y = module(x)
        for key, value in module.state_dict().items():
            tensors[f"{name}.state_dict.{key}"] = value.contiguous()
        tensors[f"{name}.input"] = x
        tensors[f"{name}.output"] = y
    out = Path(__file__).with_name("seed_scconv.safetensors")
    save_file(tensors, str(out), metadata={"source": "shared/seed/seed_scconv.py", "torch": torch.__version__})
    size = out.stat().st_size
    assert size < 1_000_000, f"golden file too large: {size} bytes"
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/seed/seed_scconv.py")
