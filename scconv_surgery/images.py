"""Unlabeled images for calibration: any folder of images, read with the model's own preprocessing.

A folder is searched recursively for files with the usual image suffixes, so an ImageFolder
(one subfolder per class) works as it is and its labels are ignored. The preprocessing is the
model's evaluation transform: timm's data config (``timm.data.resolve_data_config`` from the
model's ``pretrained_cfg``, then ``timm.data.create_transform``), or for torchvision models the
default weights' ``transforms()``, or for ultralytics YOLO models ultralytics' own (pixels in
[0, 1], letterboxed; classification: resized and centre-cropped); models that carry none of
these get timm's defaults (ImageNet mean and std, bicubic resize, centre crop at 87.5%).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ImageDataError
from .models import ULTRALYTICS, ModelSource, default_input_size

__all__ = ["IMAGE_SUFFIXES", "ImageValueWarning", "ImageChoice", "find_images", "choose_images", "check_images", "image_transform", "load_images",
           "read_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root``, recursively, in sorted order (hidden folders skipped).

    Raises:
        ImageDataError: ``root`` does not exist, is not a folder, or holds no image file.
    """
    root = Path(root)
    if not root.exists():
        raise ImageDataError(str(root), "no such folder")
    if not root.is_dir():
        raise ImageDataError(str(root), "is not a folder; give a folder of images (searched recursively)")
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder, f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")]
    if not found:
        raise ImageDataError(str(root), f"holds no image files (searched recursively for "
                             f"{', '.join(IMAGE_SUFFIXES)}); point it at a folder of images")
    return sorted(found)


def image_transform(model: nn.Module, source: ModelSource | None = None,
                    input_size: tuple[int, int, int] | None = None) -> Callable[[Any], torch.Tensor]:
    """The model's evaluation preprocessing: a PIL image to a ``(C, H, W)`` float tensor.

    Args:
        model: the model (timm models carry their ``pretrained_cfg``).
        source: how it was built; torchvision models take their default weights' transforms,
            ultralytics models ultralytics' (:func:`~scconv_surgery.yolo.yolo_transform`).
        input_size: ``(C, H, W)`` to produce (default :func:`~scconv_surgery.models.default_input_size`);
            C is 1 (the image in grey levels) or 3 (RGB).

    Raises:
        ImageDataError: C is neither 1 nor 3.
    """
    size = tuple(input_size) if input_size else default_input_size(model, source)
    if size[0] not in (1, 3):
        raise ImageDataError(str(size), f"the model takes {size[0]} channels; images give 1 (grey) or 3 (RGB)")
    transform = _torchvision_transform(source, size) if source is not None and source.library == "torchvision" \
        else None
    if source is not None and source.library == ULTRALYTICS:
        if size[0] != 3:
            raise ImageDataError(str(size), "a YOLO model reads RGB images (3 channels)")
        from .models import _yolo

        transform = _yolo().yolo_transform(model, size)
    if transform is None:
        from timm.data import create_transform, resolve_data_config

        config = resolve_data_config({"input_size": size}, model=model)
        if size[0] == 1:  # one channel: the mean of the RGB statistics
            config.update(mean=(sum(config["mean"]) / 3,), std=(sum(config["std"]) / 3,))
        transform = create_transform(**config, is_training=False)
    mode = "L" if size[0] == 1 else "RGB"
    return lambda image: transform(_eight_bit(image).convert(mode))


class ImageValueWarning(UserWarning):
    """An image held values that are not numbers (NaN: the holes of a float TIFF); they were
    read as 0. The message names the file and counts them."""


def _eight_bit(image: Any) -> Any:
    """16-bit and 32-bit integer or float grey images (PIL modes ``I;16*``, ``I``, ``F``) scaled to
    8 bits by their type's range (``F``: assumed in [0, 1]; values beyond it are clipped, +-inf
    included); PIL's own ``convert`` clips them, which turns a 16-bit image almost white. NaN
    pixels (no value: a float TIFF's holes) become 0 before the scaling, and an
    :class:`ImageValueWarning` names the file and counts them. Other images are returned as they
    are."""
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    holes = np.isnan(pixels)
    if holes.any():
        warnings.warn(f"{getattr(image, 'filename', '') or 'an image'}: {int(holes.sum())} of {holes.size} pixels "
                      "are NaN (no value); they were read as 0 (black)", ImageValueWarning, stacklevel=2)
        pixels = np.where(holes, 0.0, pixels)
    top = 1.0 if image.mode == "F" else 65535.0 if image.mode.startswith("I;16") or pixels.max() <= 65535 else 2**32 - 1
    return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _torchvision_transform(source: ModelSource, size: tuple[int, ...]) -> Callable | None:
    """The default weights' ``transforms()`` at the crop ``size``; None without weights, or for a
    size they cannot give (one channel, or not square)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(source.name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    if size[0] != 3 or size[1] != size[2]:
        return None
    keywords = dict(getattr(weights.transforms, "keywords", {}))
    crop = keywords.get("crop_size", size[1])
    if size[1] != crop:  # another size: keep the weights' resize ratio
        resize = keywords.get("resize_size", crop)
        resize = resize[0] if isinstance(resize, (list, tuple)) else resize
        return weights.transforms(crop_size=size[1], resize_size=round(size[1] * resize / crop))
    return weights.transforms()


@dataclass(frozen=True)
class ImageChoice:
    """The image files chosen from a folder.

    Attributes:
        paths: the chosen files, in sorted order.
        available: how many image files the folder holds.
    """

    paths: tuple[Path, ...]
    available: int


def choose_images(root: str | os.PathLike, num_images: int | None = 512, seed: int = 0) -> ImageChoice:
    """The files :func:`load_images` reads: up to ``num_images`` of :func:`find_images`, a random
    choice seeded by ``seed``, in their sorted order (all of them when the folder has fewer).

    Raises:
        ImageDataError: the folder is missing or holds no image file.
    """
    paths = find_images(root)
    available = len(paths)
    if num_images is not None and num_images < available:
        chosen = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:num_images]
        paths = [paths[i] for i in sorted(chosen.tolist())]
    return ImageChoice(tuple(paths), available)


def _unreadable(path: Path, err: Exception) -> ImageDataError:
    return ImageDataError(str(path), f"cannot be read as an image ({type(err).__name__}: {err}); "
                          "remove it or point to another folder")


def check_images(paths: Sequence[Path]) -> None:
    """Check that every file is an image PIL can open (its header and, where PIL can, its
    integrity, with ``Image.verify``), without decoding the pixels: fast enough to run before
    any work.

    Raises:
        ImageDataError: a file is not a readable image (named).
    """
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise _unreadable(path, err) from err


def load_images(root: str | os.PathLike, transform: Callable[[Any], torch.Tensor], *, num_images: int | None = 512,
                seed: int = 0, dtype: torch.dtype = torch.float16,
                on_image: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, list[Path]]:
    """Read up to ``num_images`` images from ``root`` (a seeded random choice) into one tensor.

    Every chosen file is decoded before any work starts, so an unreadable file fails early.

    Args:
        root: a folder of images, searched recursively (see :func:`find_images`).
        transform: a PIL image to a ``(C, H, W)`` tensor (see :func:`image_transform`).
        num_images: how many to read (None: all); a folder with fewer gives all it has.
        seed: seeds the choice of files.
        dtype: the dtype of the returned tensor; float16 (the default) halves the memory of
            float32 and keeps preprocessed pixels to about 1e-3.
        on_image: called as ``(done, total)`` after each image.

    Returns:
        ``(images, paths)``: ``(N, C, H, W)`` and the files, in that order.

    Raises:
        ImageDataError: the folder is missing or empty, a file cannot be decoded (named), or
            the images do not give one size.
    """
    paths = list(choose_images(root, num_images, seed).paths)
    return read_images(paths, transform, dtype=dtype, on_image=on_image), paths


def read_images(paths: Sequence[Path], transform: Callable[[Any], torch.Tensor], *,
                dtype: torch.dtype = torch.float16,
                on_image: Callable[[int, int], None] | None = None,
                notes: list[str] | None = None) -> torch.Tensor:
    """Decode ``paths`` with ``transform`` into one ``(N, C, H, W)`` tensor of ``dtype`` (see
    :func:`load_images`, which chooses the files from a folder).

    ``notes``: where to put what was done to an image's values (NaN pixels read as 0, one
    sentence per file, naming it); without it, each is an :class:`ImageValueWarning`.

    Raises:
        ImageDataError: a file cannot be decoded (named), or the images do not give one size.
    """
    from PIL import Image, UnidentifiedImageError

    images = None
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ImageValueWarning)
                tensor = transform(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise _unreadable(path, err) from err
        for warning in caught:
            if notes is not None and issubclass(warning.category, ImageValueWarning):
                notes.append(str(warning.message))
            else:  # anything else, as it came
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if images is None:
            images = torch.empty((len(paths), *tensor.shape), dtype=dtype)
        elif tensor.shape != images.shape[1:]:
            raise ImageDataError(str(path), f"gives a tensor of shape {tuple(tensor.shape)}, the others "
                                 f"{tuple(images.shape[1:])}; use a transform that crops to one size")
        images[index] = tensor
        if on_image is not None:
            on_image(index + 1, len(paths))
    return images  # type: ignore[return-value]  # at least one path
