"""Calibration on a real task, offline: what a converted network keeps with zero labels.

    pip install -e '.[examples]'        # scikit-learn, for its handwritten digits
    python examples/calibrate_digits.py
    python examples/calibrate_digits.py --finetune-steps 1500 --json digits.json

A small CNN (a 1-channel stem and six 3x3 conv-BN-ReLU layers) is trained on scikit-learn's
handwritten digits (1,797 8x8 images, upscaled to 32x32; 1,200 for training, 597 held out).
Its six 3x3 convs become SCConv. The script then reports top-1 accuracy on the held-out
images, and agreement with the original's predictions, for:

1. the original network;
2. converted, SCConvs freshly initialised (no calibration);
3. converted and calibrated with ``scconv_surgery.calibrate`` on 512 training images,
   without their labels;
4. both conversions fine-tuned with labels, with the same recipe and the same batches, and
   the number of steps each needs to reach the original's accuracy.

Everything runs on the CPU in a few minutes and is seeded: a rerun prints the same numbers
on the same machine and library versions.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from scconv_surgery import calibrate, convert


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): 1,200 / 597, ``(N, 1, 32, 32)``, normalised."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (F.interpolate(images, size=32, mode="bilinear", align_corners=False) - 0.3) / 0.4
    labels = torch.tensor(data.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1200], order[1200:]
    return images[train], labels[train], images[test], labels[test]


class DigitsNet(nn.Module):
    """Stem (1 -> 32, not replaceable: one input channel), then six 3x3 conv-BN-ReLU layers."""

    def __init__(self) -> None:
        super().__init__()

        def layer(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True))

        self.features = nn.Sequential(layer(1, 32), layer(32, 32), layer(32, 64, 2), layer(64, 64),
                                      layer(64, 128, 2), layer(128, 128), layer(128, 128))
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch shifted by up to 2 pixels in each direction (light augmentation)."""
    padded = F.pad(images, (2, 2, 2, 2), value=float(images.min()))
    i, j = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[..., i:i + 32, j:j + 32]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images).argmax(1)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, *, lr: float, seed: int,
          evaluate: int = 0, score=None) -> list[tuple[int, float]]:
    """Adam on cross-entropy, batches of 64 drawn with ``seed``; ``score(model)`` every ``evaluate`` steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(1, steps + 1):
        model.train()
        index = torch.randint(0, len(images), (64,), generator=generator)
        loss = F.cross_entropy(model(shifted(images[index], generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if evaluate and step % evaluate == 0:
            history.append((step, score(model)))
    model.eval()
    return history


def first_reaching(history: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, value in history if value >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=1500, help="steps to train the original")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--calibration-steps", type=int, default=200, help="steps per layer")
    parser.add_argument("--finetune-steps", type=int, default=1000, help="fine-tuning steps of each conversion")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--evaluate-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = digits()
    torch.manual_seed(0)
    original = DigitsNet()
    started = time.perf_counter()
    train(original, x_train, y_train, args.train_steps, lr=1e-3, seed=0)
    print(f"trained the original in {time.perf_counter() - started:.0f} s", flush=True)
    reference = predict(original, x_test)

    def top1(model: nn.Module) -> float:
        return float((predict(model, x_test) == y_test).float().mean())

    def agreement(model: nn.Module) -> float:
        return float((predict(model, x_test) == reference).float().mean())

    converted, plan = convert(original, seed=0)
    calibrated = copy.deepcopy(converted)
    started = time.perf_counter()
    result = calibrate(original, calibrated, x_train[:args.calibration_images], steps=args.calibration_steps)
    seconds = time.perf_counter() - started
    print(f"calibrated {len(result.layers)} layers in {seconds:.0f} s", flush=True)
    rows = {"original": (top1(original), 1.0), "converted, not calibrated": (top1(converted), agreement(converted)),
            "converted, calibrated (0 labels)": (top1(calibrated), agreement(calibrated))}
    histories = {}
    for name, start in (("random init", converted), ("calibrated", calibrated)):
        model = copy.deepcopy(start)
        histories[name] = train(model, x_train, y_train, args.finetune_steps, lr=args.finetune_lr, seed=1,
                                evaluate=args.evaluate_every, score=top1)
        print(f"fine-tuned from {name}", flush=True)
    report(args, plan, result, seconds, rows, histories)


def report(args, plan, result, seconds, rows, histories) -> None:
    original = rows["original"][0]
    print(f"\nDigits (597 held-out images), {len(plan.replaced)} convs -> SCConv; calibration: "
          f"{result.num_images} unlabeled images, {result.steps} steps per layer, {seconds:.0f} s\n")
    print("| model | top-1 | of the original's | agrees with the original |")
    print("|---|---:|---:|---:|")
    for name, (accuracy, agree) in rows.items():
        print(f"| {name} | {100 * accuracy:.2f}% | {100 * accuracy / original:.1f}% | {100 * agree:.1f}% |")
    print()
    print(f"| fine-tuned from | top-1 after {args.finetune_steps} steps | mean top-1, last fifth of the steps | "
          f"steps to reach the original ({100 * original:.2f}%) | steps to within 0.5 point |")
    print("|---|---:|---:|---:|---:|")
    reached = {}
    for name, history in histories.items():
        reached[name] = (first_reaching(history, original), first_reaching(history, original - 0.005))
        exact, close = (f"{s}" if s is not None else f"> {args.finetune_steps}" for s in reached[name])
        tail = [value for step, value in history if step > 0.8 * args.finetune_steps] or [history[-1][1]]
        print(f"| {name} | {100 * history[-1][1]:.2f}% | {100 * sum(tail) / len(tail):.2f}% | {exact} | {close} |")
    print("\nper-layer relative error (held-out calibration images): "
          + ", ".join(f"{layer.name} {layer.error_before:.2f} -> {layer.error_after:.3f}" for layer in result.layers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": {k: {"top1": a, "agreement": g} for k, (a, g) in rows.items()},
                       "finetune": {k: {"history": h, "steps_to_original": reached[k][0],
                                        "steps_to_within_half_point": reached[k][1]} for k, h in histories.items()},
                       "calibration": result.to_dict(), "calibration_seconds": seconds,
                       "settings": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
