"""What a file holds, told from its first bytes, and loader errors said safely.

Reading weights and checkpoints, a file that is not what was asked for (a README, an empty file,
a pickled module) must be named as such, not reported as "unreadable or truncated", and the
tool never relays ``torch.load``'s advice to retry with ``weights_only=False``, which runs any
code the file carries.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["sniff", "describe", "torch_load_problem", "TORCH_KINDS", "atomic_write"]

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


# Signals that mean "stop": while a file is written they are held, then delivered (see atomic_write).
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Record SIGINT / SIGTERM / SIGHUP meanwhile instead of acting on them (main thread only: others
    cannot set handlers, and signals reach the main thread anyway); yields the list they land in."""
    received: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
            except (ValueError, OSError):
                pass
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> bool:
    """Write a file atomically, and stop cleanly on Ctrl-C or SIGTERM.

    ``write(f)`` fills a temporary file in ``path``'s directory, which is then renamed over
    ``path`` with the usual permissions (``0o666`` less the umask). On any failure the temporary
    file is removed and ``path`` is untouched. A SIGINT, SIGTERM or SIGHUP that arrives meanwhile
    is held, so that it never lands inside the writer (``torch.save``'s C++ writer would turn it
    into ``[enforce fail at inline_container.cc]``): the write finishes into the temporary file,
    which is then removed instead of renamed (``path`` keeps what it held before), and the signal
    is delivered to the handler that was there before (KeyboardInterrupt for Ctrl-C; the CLI's
    exit 143 for SIGTERM; the default action otherwise). A signal that arrives in the instant
    between that check and the rename is delivered after it: the file is then complete.

    Returns:
        True (the file is written); on a held signal the signal's handler decides (it raises, or
        the process ends); if it returns, False (nothing was written).

    Raises:
        OSError, RuntimeError, ...: what ``write`` or the file system raises (the temporary file
            is removed first).
    """
    with _signals_held() as received:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            if not received:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone already after the rename
    if received:
        signal.raise_signal(received[0])  # to the handler restored above
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
