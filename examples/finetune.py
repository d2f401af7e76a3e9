"""Fine-tune a converted checkpoint with plain PyTorch, on one process or many (torchrun + DDP).

    # one process (CPU or one GPU), synthetic data
    python examples/finetune.py model.pt --steps 20 --out finetuned.pt
    # two processes: NCCL on GPUs, gloo on CPU
    torchrun --standalone --nproc_per_node=2 examples/finetune.py model.pt --data /data/imagenet/train \
        --steps 1000 --batch-size 64 --lr 1e-4 --new-lr 1e-3 --out finetuned.pt

The new SCConv parameters get their own learning rate (--new-lr), norms and biases no weight
decay (scconv_surgery.param_groups). Where CUDA is present the model runs in channels_last
with automatic mixed precision. Rank 0 prints one JSON line per logged step to stdout
({"step", "loss", "lr", "images_per_s"}) and saves the result in the same checkpoint format,
so `scconv_surgery.load("finetuned.pt")` and `scconv verify` work on it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import scconv_surgery
from scconv_surgery.checkpoint import read_checkpoint, save_checkpoint


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); a process group when launched by torchrun."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")


AUX_WEIGHT = 0.4  # weight of auxiliary classifiers' losses (Inception, GoogLeNet), as in torchvision's recipes


def logits_and_auxiliary(output: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The classifier logits (N, num_classes) of a model's output, and its auxiliary logits.

    A tensor is the logits; in a nested output (tuple, namedtuple, list, dict) the first tensor
    is, and later tensors of the same shape are auxiliary classifiers (Inception's aux_logits).

    Raises:
        ValueError: the first tensor is not (N, num_classes): not a classifier's output.
    """
    leaves = scconv_surgery.tensor_leaves(output)
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
    args = parse_args()
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to overwrite it")
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed + rank)
    cuda = device.type == "cuda"
    manifest = read_checkpoint(args.checkpoint)["manifest"]
    model = scconv_surgery.load(args.checkpoint, map_location=device)
    size = args.input_size or manifest["input_size"][-1]
    with torch.no_grad():
        num_classes = logits_and_auxiliary(model(torch.zeros(1, 3, size, size, device=device)))[0].shape[-1]
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    groups = scconv_surgery.param_groups(model, lr=args.lr, new_lr=args.new_lr, weight_decay=args.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if world > 1 else model

    dataset = build_dataset(args, size, num_classes)
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
        manifest = dict(manifest)
        manifest["finetune"] = {"from": os.path.basename(args.checkpoint), "steps": args.steps, "world_size": world,
                                "batch_size": args.batch_size, "lr": args.lr, "new_lr": args.new_lr,
                                "data": "synthetic" if not args.data else os.path.basename(os.path.abspath(args.data))}
        save_checkpoint(args.out, model.to(memory_format=torch.contiguous_format), manifest)
        print(json.dumps({"saved": args.out}), flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
