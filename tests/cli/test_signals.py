"""Ctrl-C and SIGTERM while the checkpoint is being written (issue 20, section 7): the write into
the temporary file finishes, the temporary file is removed, nothing is left at --out (a file
there before is kept), and the exit is 130 / 143 with the usual message."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs `scconv ARGS...` with a checkpoint write that stalls 3 s inside the writer (as a large model's
# does), after touching MARKER: the test sends its signal then. The stall is a test-only patch here.
SLOW_SAVE = """
import sys, time
from pathlib import Path
from scconv_surgery import checkpoint
from scconv_surgery.cli.app import main

marker, real = Path(sys.argv[1]), checkpoint.atomic_write

class Slow:
    def __init__(self, f):
        self.f, self.first = f, True
    def write(self, data):
        if self.first:
            self.first = False
            marker.touch()
            time.sleep(3)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)

checkpoint.atomic_write = lambda path, write: real(path, lambda f: write(Slow(f)))
sys.argv = ["scconv", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("signum, code, suffix", [(signal.SIGINT, 130, ".pt"), (signal.SIGTERM, 143, ".safetensors")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_write_leaves_nothing_and_exits_128_plus_signal(tmp_path, signum, code, suffix):
    words = "interrupted: nothing was written"
    out, marker = tmp_path / f"m{suffix}", tmp_path / "writing"
    out.write_bytes(b"the previous file")  # --force: a signal keeps it as it was
    args = ["convert", "--factory", "examples.factory:small_convnet", "--model-kwargs", "width=8", "--input-size",
            "16", "--out", str(out), "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(marker), *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert words in stderr and "Traceback" not in stderr and "enforce fail" not in stderr
    assert out.read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, marker.name])  # no temporary file
    assert "wrote" not in stdout


def test_atomic_write_hands_the_held_signal_to_the_previous_handler(tmp_path):
    from scconv_surgery._files import atomic_write

    def write(f):
        f.write(b"x")
        signal.raise_signal(signal.SIGINT)  # held: the write goes on
        f.write(b"y")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "f.bin", write)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert atomic_write(tmp_path / "f.bin", lambda f: f.write(b"xy")) and (tmp_path / "f.bin").read_bytes() == b"xy"
