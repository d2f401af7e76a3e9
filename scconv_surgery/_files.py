"""What a file holds, told from its first bytes, and loader errors said safely.

Reading weights and checkpoints, a file that is not what was asked for (a README, an empty file,
a pickled module) must be named as such, not reported as "unreadable or truncated", and the
tool never relays ``torch.load``'s advice to retry with ``weights_only=False``, which runs any
code the file carries.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

__all__ = ["sniff", "describe", "torch_load_problem", "TORCH_KINDS"]

ZIP_MAGIC = b"PK\x03\x04"  # torch.save since PyTorch 1.6
TORCH_KINDS = ("torch", "torch-legacy")
_HEAD = 64


def sniff(path: Path) -> str:
    """``"torch"`` (a torch.save zip), ``"torch-legacy"`` (a pickle), ``"safetensors"``,
    ``"empty"``, ``"text"`` or ``"unknown"``, from the first bytes of ``path``."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "torch"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    text = head.decode("utf-8", "ignore")  # "ignore": the head may cut a character in two
    return "text" if text and all(c.isprintable() or c in "\t\r\n" for c in text) else "unknown"


def describe(path: Path, kind: str) -> str:
    """``kind`` in words, e.g. "a text file (it starts with '# scconv-surgery')"."""
    if kind == "empty":
        return "an empty file"
    with path.open("rb") as f:
        head = f.read(24)
    if kind == "text":
        first = head.decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
        return f"a text file (it starts with {first!r})"
    if kind == "unknown":
        return f"a file of unknown format (it starts with bytes {head[:8].hex(' ')})"
    return {"torch": "a PyTorch file", "torch-legacy": "a PyTorch file", "safetensors": "a safetensors file"}[kind]


def torch_load_problem(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch's message carries terminal colours
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"it holds pickled Python objects ({unsafe.group(1)}), not only tensors; save "
                "model.state_dict() instead of the module or training state")
    if "weights only load failed" in text.lower():
        return "it is not a state of tensors that loads safely (torch.load with weights_only=True)"
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}"
