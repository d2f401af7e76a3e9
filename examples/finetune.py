"""Fine-tune a converted checkpoint with plain PyTorch, on one process or many (torchrun + DDP).

    # one process (CPU or one GPU), synthetic data
    python examples/finetune.py model.pt --steps 20 --out finetuned.pt
    # two processes: NCCL on GPUs, gloo on CPU
    torchrun --standalone --nproc_per_node=2 examples/finetune.py model.pt --data /data/imagenet/train \
        --steps 1000 --batch-size 64 --lr 1e-4 --new-lr 1e-3 --out finetuned.pt

The new SCConv parameters get their own learning rate (--new-lr), norms and biases no weight
decay (scconv_surgery.finetune.param_groups); parameters that never receive a gradient (the `seed`
variant's group norm, behind its hard masks) are loaded frozen and left out, so DDP does not
wait for them. Every argument, the checkpoint and the model's output are checked before any
work (bad input exits 2, as argparse does). Where CUDA is present the model runs in
channels_last with automatic mixed precision. Rank 0 prints one JSON line per logged step to
stdout ({"step", "loss", "lr", "images_per_s"}) and saves the result in the same checkpoint
format, so `scconv_surgery.load("finetuned.pt")` and `scconv verify` work on it.

The loss is cross-entropy on the model's logits: its output, or the first tensor of a tuple or
dict output, plus 0.4 times that of auxiliary classifiers (Inception's aux_logits). Models
without (N, num_classes) logits (feature extractors, detectors) need a loss of their own.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import scconv_surgery
from scconv_surgery import CheckpointError, read_checkpoint, save_checkpoint
from scconv_surgery._probe import tensor_leaves
from scconv_surgery.checkpoint import check_output_path
from scconv_surgery.errors import OutputPathError
from scconv_surgery.finetune import param_groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by 'scconv convert' (.pt or .safetensors)")
    parser.add_argument("--out", required=True, help="where to save the fine-tuned checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--data", help="an ImageFolder directory (class per subfolder); default: synthetic data")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per process per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of pretrained parameters")
    parser.add_argument("--new-lr", type=float, default=1e-3, help="learning rate of the new SCConv parameters")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--input-size", type=int, help="image side; default: the checkpoint's recorded size")
    parser.add_argument("--synthetic-images", type=int, default=256, help="synthetic dataset size")
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def image_folder_problem(root: str) -> str | None:
    """What makes ``root`` a poor ImageFolder (one subfolder per class, the images inside), or None.

    torchvision's ImageFolder takes each subfolder as a class and silently ignores files beside
    them: a folder of images with one subfolder trains on that one class. Refused here: image
    files beside the class folders, fewer than two classes, and class folders without images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def is_image(name: str) -> bool:
        return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)

    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [e for e in entries if is_image(e) and not os.path.isdir(os.path.join(root, e))]
    empty = [f for f in folders if not any(is_image(name) for _, _, files in os.walk(os.path.join(root, f))
                                           for name in files)]
    if loose:
        where = (f"beside its {len(folders)} class folder(s) ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''})"
                 if folders else "and no class folders")
        return (f"holds {len(loose)} image file(s) {where}, e.g. {loose[0]!r}: ImageFolder would ignore them "
                "(and take each subfolder as a class); move each image into the folder of its class")
    if empty:
        return f"has class folders without images: {', '.join(empty[:5])}; remove them or add their images"
    if len(folders) < 2:
        return (f"has {len(folders)} class folder(s){' (' + folders[0] + ')' if folders else ''}: a classifier "
                "needs at least 2 classes, one subfolder of images each")
    return None


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Every argument, before any work (as ``scconv convert`` does); the checkpoint's manifest.

    Exits 2 through ``parser.error`` with the argument and the problem.
    """
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--synthetic-images": args.synthetic_images,
                "--log-every": args.log_every, "--input-size": args.input_size}
    for option, value in positive.items():
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    for option, value in {"--lr": args.lr, "--new-lr": args.new_lr, "--weight-decay": args.weight_decay}.items():
        if not math.isfinite(value) or value < 0 or (value == 0 and option != "--weight-decay"):
            parser.error(f"{option} must be a finite number above 0 (0 allowed for --weight-decay), got {value}")
    if args.data is not None and not os.path.isdir(args.data):
        parser.error(f"--data {args.data!r} is not a directory (an ImageFolder: one subfolder per class)")
    problem = image_folder_problem(args.data) if args.data is not None else None
    if problem:
        parser.error(f"--data {args.data!r} {problem}")
    try:
        manifest = read_checkpoint(args.checkpoint).manifest
        out = check_output_path(args.out, overwrite=args.force)
    except (CheckpointError, OutputPathError) as err:
        parser.error(str(err))
    if str(out.resolve()) == os.path.realpath(args.checkpoint):
        parser.error(f"--out {args.out!r} is the checkpoint being fine-tuned; write the result elsewhere")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.data is None and args.synthetic_images < args.batch_size * world:
        parser.error(f"--synthetic-images {args.synthetic_images} is fewer than one batch for each of the {world} "
                     f"process(es) (--batch-size {args.batch_size}); no step would run")
    return manifest


def process_device() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment, before any process group exists."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), device


AUX_WEIGHT = 0.4  # weight of auxiliary classifiers' losses (Inception, GoogLeNet), as in torchvision's recipes


def logits_and_auxiliary(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The classifier logits (N, num_classes) of a model's output, and its auxiliary logits.

    A tensor is the logits; in a nested output (tuple, namedtuple, list, dict) the first tensor
    is, and later tensors of the same shape are auxiliary classifiers (Inception's aux_logits).

    Raises:
        ValueError: the first tensor is not (N, num_classes): not a classifier's output.
    """
    leaves = tensor_leaves(output)
    if not leaves or leaves[0][1].ndim != 2:
        shapes = ", ".join(f"{path} {tuple(t.shape)}" for path, t in leaves[:4]) or type(output).__name__
        raise ValueError(f"this script trains classifiers, whose output (or its first tensor) is logits of shape "
                         f"(N, num_classes); this model returns {shapes}. Adapt the loss in examples/finetune.py")
    logits = leaves[0][1]
    return logits, [t for _, t in leaves[1:] if t.shape == logits.shape]


def classification_loss(output: object, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits, plus AUX_WEIGHT times that of each auxiliary classifier."""
    logits, auxiliary = logits_and_auxiliary(output)
    loss = nn.functional.cross_entropy(logits, labels)
    for aux in auxiliary:
        loss = loss + AUX_WEIGHT * nn.functional.cross_entropy(aux, labels)
    return loss


def build_dataset(args: argparse.Namespace, size: int, num_classes: int) -> Dataset:
    if args.data:
        from torchvision import datasets, transforms

        transform = transforms.Compose([
            transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        return datasets.ImageFolder(args.data, transform=transform)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.synthetic_images, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (args.synthetic_images,), generator=generator)
    return TensorDataset(images, labels)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    manifest = check_arguments(parser, args)
    rank, world, device = process_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed + rank)
    model = scconv_surgery.load(args.checkpoint, map_location=device)  # gradient-free parameters come frozen
    size = args.input_size or manifest.input_size[-1]
    try:
        with torch.no_grad():
            num_classes = logits_and_auxiliary(model(torch.zeros(1, 3, size, size, device=device)))[0].shape[-1]
    except ValueError as err:
        parser.error(str(err))
    dataset = build_dataset(args, size, num_classes)
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > num_classes:
        parser.error(f"--data has {len(classes)} classes but the model has {num_classes} outputs; convert it with "
                     f"--num-classes {len(classes)}")
    if len(dataset) < args.batch_size * world:
        parser.error(f"--data has {len(dataset)} images, fewer than one batch for each of the {world} process(es)")

    if world > 1:  # every check passed on every process: now join the group
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    groups = param_groups(model, lr=args.lr, new_lr=args.new_lr, weight_decay=args.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if world > 1 else model
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                        num_workers=args.workers, drop_last=True, pin_memory=cuda)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=cuda):
                loss = classification_loss(ddp(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                value = loss.detach().float()
                if world > 1:  # the mean over processes (gloo has no AVG)
                    dist.all_reduce(value, op=dist.ReduceOp.SUM)
                    value /= world
                if rank == 0:
                    elapsed = time.perf_counter() - start
                    print(json.dumps({"step": step, "loss": round(float(value), 6), "lr": args.lr,
                                      "images_per_s": round(step * args.batch_size * world / elapsed, 1)}),
                          flush=True)
                    if not math.isfinite(float(value)):
                        raise SystemExit(f"loss is not finite at step {step}")
            if step >= args.steps:
                break
        epoch += 1

    if rank == 0:
        model.eval()
        finetune = {"from": os.path.basename(args.checkpoint), "steps": args.steps, "world_size": world,
                    "batch_size": args.batch_size, "lr": args.lr, "new_lr": args.new_lr,
                    "data": "synthetic" if not args.data else os.path.basename(os.path.abspath(args.data))}
        manifest = dataclasses.replace(manifest, extra={**manifest.extra, "finetune": finetune})
        save_checkpoint(args.out, model.to(memory_format=torch.contiguous_format), manifest)
        print(json.dumps({"saved": args.out}), flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; a checkpoint being saved is not left half-written
        print("interrupted: stopped (a checkpoint is saved whole or not at all)", file=sys.stderr)
        raise SystemExit(130) from None
