"""SCConv in ultralytics YOLO, end to end and offline.

    pip install -e '.[yolo]'            # ultralytics (AGPL-3.0)
    python examples/yolo.py --out-dir yolo-demo
    python examples/yolo.py --out-dir yolo-demo --imgsz 64 --epochs 1   # the test's tiny run

1. build yolov8n from the YAML ultralytics ships (no download, random weights, 2 classes);
2. convert it with the ``yolo`` preset (the bottleneck convs of the C2f blocks), writing this
   tool's checkpoint (``model.pt``) and ultralytics' own ``.pt`` (``model_yolo.pt``);
3. ``YOLO("model_yolo.pt")``: predict, train (a few steps on a small synthetic data set in
   YOLO format, written here), validate;
4. fuse (each SCConv's BatchNorm folds into a per-channel affine) and check the outputs;
5. export to ONNX and check onnxruntime against PyTorch (within 1e-4).

Same steps from a shell::

    scconv convert ultralytics:yolov8n.yaml --preset yolo --num-classes 2 --out model.pt --yolo-out model_yolo.pt
    yolo train model=model_yolo.pt data=data.yaml epochs=2 imgsz=64    # trains the SCConv model
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no online checks or downloads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def synthetic_dataset(root: Path, *, images: int, imgsz: int) -> Path:
    """A two-class YOLO-format data set: a bright rectangle (class 0) or a dark one (class 1) on noise."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            pixels = (rng.random((imgsz, imgsz, 3)) * 64 + 96).astype(np.uint8)
            w, h = rng.uniform(0.25, 0.5, size=2)
            cx, cy = rng.uniform(0.3, 0.7, size=2)
            x0, x1 = int((cx - w / 2) * imgsz), int((cx + w / 2) * imgsz)
            y0, y1 = int((cy - h / 2) * imgsz), int((cy + h / 2) * imgsz)
            cls = i % 2
            pixels[y0:y1, x0:x1] = 255 if cls == 0 else 0
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.jpg")
            (root / "labels" / split / f"{i}.txt").write_text(f"{cls} {cx:.4f} {cy:.4f} {w:.4f} {h:.4f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: bright\n  1: dark\n")
    return data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("yolo-demo"))
    parser.add_argument("--imgsz", type=int, default=160, help="image size (ultralytics' imgsz); 640 for real use")
    parser.add_argument("--images", type=int, default=8, help="synthetic images per split")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)

    from ultralytics import YOLO

    from scconv_surgery.models import ModelSource
    from scconv_surgery.pipeline import WriteCheckpoint, run_conversion
    from scconv_surgery.rules import PRESETS

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    size = (3, args.imgsz, args.imgsz)
    report: dict = {}

    # 1-2: build and convert (scconv convert ultralytics:yolov8n.yaml --preset yolo ...)
    result = run_conversion(ModelSource.parse("ultralytics:yolov8n.yaml", kwargs={"nc": 2}),
                            output=WriteCheckpoint(out / "model.pt", overwrite=True), rules=PRESETS["yolo"],
                            input_size=size, yolo_output=out / "model_yolo.pt")
    counts = result.report.to_dict()
    report["replaced"] = len(result.plan.replaced)
    report["params"] = [counts["before"]["params"], counts["after"]["params"]]
    report["macs"] = [counts["before"]["macs"], counts["after"]["macs"]]

    # 3: YOLO(path): predict, train, validate
    yolo = YOLO(str(out / "model_yolo.pt"))
    data = synthetic_dataset(out / "data", images=args.images, imgsz=args.imgsz)
    first = next((out / "data" / "images" / "val").glob("*.jpg"))
    report["predict_boxes"] = len(yolo.predict(str(first), imgsz=args.imgsz, verbose=False)[0].boxes)
    common = dict(data=str(data), imgsz=args.imgsz, batch=args.batch, workers=0, plots=False, device="cpu",
                  verbose=False, project=str((out / "runs").resolve()), exist_ok=True)
    yolo.train(epochs=args.epochs, amp=False, name="train", **common)
    from scconv_surgery.layers import ScConv

    report["scconv_layers_trained"] = sum(isinstance(m, ScConv) for m in yolo.model.modules())  # not the dense model
    report["val_map50"] = float(yolo.val(name="val", **common).box.map50)

    # 4: fuse (in place: yolo.model is fused from here on), same outputs
    model = yolo.model.float().eval()
    x = torch.rand(1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)[0]
        after = model.fuse(verbose=False)(x)[0]
    report["fuse_max_abs_diff"] = float((after - before).abs().max())

    # 5: ONNX export, onnxruntime against PyTorch
    import onnxruntime as ort

    onnx_path = yolo.export(format="onnx", imgsz=args.imgsz, simplify=False, dynamic=False, verbose=False)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    report["onnx_max_abs_diff"] = float(np.abs(got - after.numpy()).max())
    if not np.allclose(got, after.numpy(), rtol=1e-4, atol=1e-4):
        raise SystemExit(f"onnxruntime differs from PyTorch by {report['onnx_max_abs_diff']:.3g}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
