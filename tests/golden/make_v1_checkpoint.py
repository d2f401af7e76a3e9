"""Regenerate tests/golden/v1_test_resnet.pt: a checkpoint of format version 1 as this release
writes it, kept so that later releases prove they still load it.

    python tests/golden/make_v1_checkpoint.py

Only rerun it when the format version changes (then keep the old file under a new name).
It also stores an input and the checkpoint's output on it (v1_test_resnet_io.safetensors).
Size cap: 3 MB.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

import scconv_surgery
from scconv_surgery.pipeline import run_conversion

HERE = Path(__file__).parent


def main() -> None:
    out = HERE / "v1_test_resnet.pt"
    run_conversion("timm:test_resnet", output=out, input_size=(3, 64, 64), seed=0)
    model = scconv_surgery.load(out)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, str(HERE / "v1_test_resnet_io.safetensors"))
    size = out.stat().st_size
    assert size < 3_000_000, f"fixture too large: {size} bytes"
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main()
