"""A small synthetic detection dataset in COCO format: shapes on textured backgrounds.

Every image is a random texture (a smooth colour gradient plus stripes and pixel noise) with
1 to ``max_objects`` filled shapes pasted on it, each a random colour and size; the category
is the shape (``circle``, ``square``, ``triangle``), the box the tight extent of the whole
shape. Later shapes are drawn over earlier ones: a shape of which less than
``MIN_VISIBLE`` (25 %) of its pixels stay visible gets no box (the last one drawn always has
its box). Written as::

    OUT/train/000000.png ...   OUT/train.json
    OUT/val/000000.png ...     OUT/val.json

with COCO's ``images`` / ``annotations`` (``bbox`` = ``[x, y, w, h]``, ``area``,
``iscrowd`` 0) / ``categories`` (ids 1, 2, 3). Deterministic for a seed; written into a
staging folder and renamed into place, so a crash never leaves a half-made dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sgcnn._io import check_output_dir, publish_dir, staging_dir
from sgcnn.errors import SgcnnError

CATEGORIES = ("circle", "square", "triangle")
MIN_VISIBLE = 0.25  # fraction of a shape's pixels left visible for it to keep its box


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    train_images: int = 200,
    val_images: int = 50,
    image_size: int = 128,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write the dataset (see the module docstring) to ``out_dir``, which must not exist or be
    empty; returns ``out_dir``. Shapes are 15-45 % of the image side and may overlap."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SgcnnError(f"{out} exists and is not empty: choose another folder")
    if min(train_images, val_images) < 1 or image_size < 32 or max_objects < 1:
        raise SgcnnError(
            "need >= 1 train and val image, image_size >= 32 and max_objects >= 1, got "
            f"{train_images}, {val_images}, {image_size}, {max_objects}"
        )
    check_output_dir(out)
    staging = staging_dir(out)
    try:
        rng = np.random.default_rng(seed)
        for split, n in (("train", train_images), ("val", val_images)):
            (staging / split).mkdir()
            coco = _split(rng, staging / split, n, image_size, max_objects)
            (staging / f"{split}.json").write_text(json.dumps(coco))
        publish_dir(staging, out.resolve(), overwrite=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _split(rng, folder: Path, n: int, size: int, max_objects: int) -> dict:
    images, annotations = [], []
    for i in range(n):
        image, boxes = _image(rng, size, max_objects)
        name = f"{i:06d}.png"
        image.save(folder / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for category, (x0, y0, x1, y1) in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _image(rng, size: int, max_objects: int) -> tuple[Image.Image, list]:
    """A textured background with shapes; returns the image and ``[(category, box)]``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    background = low + (high - low) * ramp[..., None]
    stripes = 25 * np.sin(2 * np.pi * rng.uniform(2, 8) * (xx if rng.random() < 0.5 else yy))
    noise = rng.normal(0, 12, (size, size, 3))
    pixels = np.clip(background + stripes[..., None] + noise, 0, 255).astype(np.uint8)
    return _paint(Image.fromarray(pixels), _shapes(rng, size, max_objects))


def _shapes(rng, size: int, max_objects: int) -> list[tuple[int, tuple, tuple]]:
    """``[(category, box, colour)]`` of 1 to ``max_objects`` random shapes."""
    shapes = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        side = int(rng.uniform(0.15, 0.45) * size)
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        shapes.append((category, (x0, y0, x0 + side, y0 + side), colour))
    return shapes


def _paint(image: Image.Image, shapes: list) -> tuple[Image.Image, list]:
    """Draw ``shapes`` in order on ``image``; returns it and ``[(category, box)]`` of the
    shapes that stay at least ``MIN_VISIBLE`` visible."""
    draw = ImageDraw.Draw(image)
    owner = Image.new("I", image.size, 0)  # which shape each pixel shows (0: background)
    owners = ImageDraw.Draw(owner)
    areas = []
    for index, (category, box, colour) in enumerate(shapes, start=1):
        _draw(draw, category, box, colour)
        _draw(owners, category, box, index)
        areas.append(int((np.asarray(owner) == index).sum()))
    shown = np.bincount(np.asarray(owner).ravel(), minlength=len(shapes) + 1)
    boxes = [
        (category, box)
        for (category, box, _), area, seen in zip(shapes, areas, shown[1:], strict=True)
        if seen >= MIN_VISIBLE * area
    ]
    return image, boxes


def _draw(draw: ImageDraw.ImageDraw, category: int, box: tuple, fill) -> None:
    x0, y0, x1, y1 = box
    if category == 1:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif category == 2:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon([(x0, y1 - 1), ((x0 + x1) // 2, y0), (x1 - 1, y1 - 1)], fill=fill)
