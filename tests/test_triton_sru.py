"""The opt-in fused Triton kernel of SRU (scconv_surgery/layers/triton_sru.py) against the
PyTorch path, on CPU through Triton's interpreter (TRITON_INTERPRET=1, set in a subprocess
because Triton reads it when the kernel is defined)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from scconv_surgery.layers import SRU

CHECK = textwrap.dedent("""
    import torch
    from scconv_surgery.layers import SRU
    from scconv_surgery.layers.triton_sru import fused_soft_gate
    cases = [(16, 4, False, torch.float32, 1e-5), (15, 5, True, torch.float32, 1e-5),
             (32, 16, False, torch.bfloat16, 2e-2)]  # C, gn_groups, channels_last, dtype, tolerance
    for channels, groups, channels_last, dtype, tol in cases:
        torch.manual_seed(0)
        sru = SRU(channels, gn_groups=groups).eval()
        with torch.no_grad():
            sru.gn.weight.uniform_(-1.0, 2.0)
            sru.gn.bias.normal_(0.0, 0.1)
        x = torch.randn(2, channels, 5, 7).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = sru(x)
            scale, shift = sru.gate_affine(torch.float32)
            out = fused_soft_gate(x, sru.gn.num_groups, sru.gn.eps, scale, shift, sru.gate_threshold)
        assert out.dtype == expected.dtype and out.stride() == expected.stride(), (out.dtype, out.stride())
        torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
    print("ok")
""")


def test_fused_kernel_matches_pytorch_path_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_fused_kernel_is_opt_in(monkeypatch):
    torch.manual_seed(0)
    reference = SRU(16).eval()
    assert not reference.use_triton
    monkeypatch.setenv("SCCONV_TRITON", "1")
    sru = SRU(16).eval()
    assert sru.use_triton
    sru.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():  # CPU tensors: the PyTorch path runs
        torch.testing.assert_close(sru(x), reference(x), atol=0.0, rtol=0.0)
