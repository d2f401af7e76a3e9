"""Which ONNX form of SCConv's GroupNorm onnxruntime runs faster, per layer shape.

    python benchmarks/onnx_norm_form.py
    python benchmarks/onnx_norm_form.py --shapes 64@56 256@14 --batch 8 --rounds 25 --json norm.json

Each layer (stride 1, after ``optimize_for_inference``) is exported twice at opset 21: with
GroupNorm as one ``GroupNormalization`` node, and in the instance-norm form that
``optimize_for_inference`` chooses at stride 1 (``Reshape``, ``InstanceNormalization``,
``Reshape``, ``BatchNormalization``; ``layers/_deploy.sru``). Both onnxruntime sessions run at one
thread, interleaved round by round, each timed by the thread's own CPU time; the ratio is the
median of the per-round ratios (instance-norm / GroupNormalization), with the 25-75% spread.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from scconv_surgery.inference import optimize_for_inference
from scconv_surgery.layers import ScConv


def ratio(channels: int, size: int, batch: int, rounds: int, folder: str) -> dict:
    torch.manual_seed(0)
    layer = ScConv(channels).eval()
    x = torch.randn(batch, channels, size, size)
    optimize_for_inference(layer, (channels, size, size), batch_size=batch)
    sessions = {}
    for form in (False, True):
        layer.sru.instance_norm_export = form
        path = os.path.join(folder, f"c{channels}_{size}_{form}.onnx")
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            torch.onnx.export(layer, (x,), dynamo=True, opset_version=21).save(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        sessions[form] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = x.numpy()
    outputs = {form: s.run(None, {s.get_inputs()[0].name: feed})[0] for form, s in sessions.items()}  # warm-up
    ratios = []
    for _ in range(rounds):
        seconds = {}
        for form, session in sessions.items():
            start = time.thread_time()
            session.run(None, {session.get_inputs()[0].name: feed})
            seconds[form] = time.thread_time() - start
        ratios.append(seconds[True] / seconds[False])
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return {"shape": f"{channels}@{size}", "batch": batch, "ratio": float(q50), "q25": float(q25), "q75": float(q75),
            "max_abs_diff": float(np.abs(outputs[True] - outputs[False]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["16@12", "64@56", "64@14", "128@28", "256@14", "512@7",
                                                        "1024@7"], help="C@HW of stride-1 layers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.shapes:
            channels, size = (int(v) for v in shape.split("@"))
            rows.append(ratio(channels, size, args.batch, args.rounds, folder))
    print("| shape | batch | instance-norm / GroupNormalization [25-75%] | max abs difference |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| C={row['shape']} | {row['batch']} | {row['ratio']:.3f}x [{row['q25']:.3f}-{row['q75']:.3f}] | "
              f"{row['max_abs_diff']:.1e} |")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
