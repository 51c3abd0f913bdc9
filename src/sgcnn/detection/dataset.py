"""COCO-format detection data: an image folder plus an annotation file, checked on load.

:func:`load_coco` reads ``{"images": [...], "annotations": [...], "categories": [...]}`` and
rejects, with one line naming the file, the entry and the fix: a file that is not JSON, missing
sections or fields, images missing from the folder, duplicate ids, annotations of unknown
images, boxes with negative width or height or reaching more than one pixel outside their
image, an ``area`` that is not a number >= 0, an ``iscrowd`` other than 0 / 1, and category ids
the model was not built for or that name other categories than the model's. Crowd annotations
(``iscrowd: 1``) and boxes with no area once clipped to their image (COCO-2014's train set has
some: ``[x, y, w, 0.0]``) are left out of training targets, as in torchvision's references
(:attr:`CocoDetection.dropped` counts the latter), and kept in the file that COCO evaluation
reads. 16-bit grayscale images are scaled to 8 bits, as in classification.

Items are ``(image, target)``: ``image`` float32 ``[3, H, W]`` in ``[0, 1]``, ``target``
``{"boxes": float32 [n, 4] (x0, y0, x1, y1) in pixels, "labels": int64 [n] (1..K; 0 is the
background), "image_id": int}``, as torchvision's detection models take them. Labels are
the positions of the category ids in :attr:`CocoDetection.category_ids` (sorted) plus one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sgcnn.data.file_dataset import convert_8bit
from sgcnn.data.imagefolder import UNREADABLE
from sgcnn.errors import SgcnnError

BOX_TOLERANCE = 1.0  # pixels a box may reach outside its image (rounding in converters)


class CocoDetection(Dataset):
    """Images and boxes of one COCO annotation file (see the module docstring)."""

    def __init__(
        self,
        images: list[dict],
        targets: list[dict],
        categories: list[dict],
        annotation_file: Path,
        ground_truth: dict,
        flip: bool = False,
        dropped: int = 0,
    ) -> None:
        self.images = images  # [{"id", "path", "width", "height"}]
        self.targets = targets  # per image: {"boxes": ndarray [n, 4] xyxy, "category_ids": [n]}
        self.categories = categories  # [{"id", "name"}], sorted by id
        self.category_ids = [c["id"] for c in categories]
        self.annotation_file = annotation_file
        self.ground_truth = ground_truth  # checked COCO dict (areas filled in) for COCOeval
        self.flip = flip  # random horizontal flip (training)
        self.dropped = dropped  # boxes with no area once clipped: not training targets
        self._label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        info, target = self.images[index], self.targets[index]
        try:
            with Image.open(info["path"]) as image:
                # 16-bit grayscale scaled v / 257 (a plain convert clips it at 255: all white)
                pixels = np.asarray(convert_8bit(image, "RGB"), dtype=np.uint8)
        except UNREADABLE as err:  # also decompression bombs, float images, odd modes
            raise SgcnnError(
                f"cannot read image {info['path']}: {err}; replace the file or remove its "
                "entry from the annotations"
            ) from err
        if pixels.shape[:2] != (info["height"], info["width"]):  # the boxes were checked by it
            raise SgcnnError(
                f"image {info['path']} is {pixels.shape[1]}x{pixels.shape[0]}, but the "
                f"annotations give {info['width']}x{info['height']} for it; fix its width / "
                "height entry"
            )
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._label[c] for c in target["category_ids"]], dtype=torch.int64)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
            width = x.shape[-1]
            boxes = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
            )
        return x, {"boxes": boxes, "labels": labels, "image_id": int(info["id"])}


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches are lists: images of different sizes are not stacked."""
    return [b[0] for b in batch], [b[1] for b in batch]


def load_coco(
    images_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
    category_ids: list[int] | None = None,
    flip: bool = False,
    category_names: Mapping[int, str] | None = None,
) -> CocoDetection:
    """Read and check a COCO annotation file whose ``file_name`` s live in ``images_dir``.

    ``category_ids``: the categories a trained model was built for; the file may use a subset
    of them, any other id is an error. ``None``: the file's own categories.
    ``category_names``: the model's ``{id: name}``; a category of the file whose id is in it
    must have that name (else the file numbers the categories differently and the model's
    predictions would be scored against other classes). Ids it lacks, and categories of the
    file without a ``name``, are not checked.
    """
    path, folder = Path(annotation_file), Path(images_dir)
    data = _read_json(path)
    where = str(path)
    if not folder.is_dir():
        raise SgcnnError(f"image folder {folder} does not exist (the images of {where})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SgcnnError(f"{where} has no {key!r} list: it is not a COCO annotation file")
    categories = sorted((_category(c, where) for c in data["categories"]), key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise SgcnnError(f"{where}: category ids repeat: {ids}")
    if not categories:
        raise SgcnnError(f"{where} lists no categories")
    if category_ids is not None:
        unknown = sorted(set(ids) - set(category_ids))
        if unknown:
            raise SgcnnError(
                f"{where} has category ids {unknown[:10]} that the model was not built for "
                f"(it knows {sorted(category_ids)[:20]}); train a detector on these categories"
            )
        if category_names:
            named = {c["id"] for c in data["categories"] if "name" in c}  # all checked above
            _check_names(categories, named, category_names, where)
        known = {c["id"]: c for c in categories}
        categories = [known.get(i, {"id": i, "name": str(i)}) for i in sorted(category_ids)]
    images, index = [], {}
    missing = []
    for entry in data["images"]:
        info = _image(entry, folder, where)
        if info["id"] in index:
            raise SgcnnError(f"{where}: image id {info['id']} appears twice")
        if not os.path.isfile(info["path"]):
            missing.append(info["path"])
        index[info["id"]] = len(images)
        images.append(info)
    if missing:
        raise SgcnnError(
            f"{where} references {len(missing)} images missing from {folder}, e.g. {missing[0]}"
        )
    boxes: list[list] = [[] for _ in images]
    cats: list[list] = [[] for _ in images]
    valid_ids = {c["id"] for c in categories}
    gt_annotations, dropped = [], 0
    for entry in data["annotations"]:
        image_id, category, box, crowd, area = _annotation(entry, where)
        if image_id not in index:
            raise SgcnnError(
                f"{where}: annotation {entry.get('id')} refers to image {image_id}, "
                "which is not in 'images'"
            )
        if category not in valid_ids:
            raise SgcnnError(
                f"{where}: annotation {entry.get('id')} has category {category}, not among the "
                f"categories {sorted(valid_ids)[:20]}"
            )
        info = images[index[image_id]]
        _check_box(box, info, entry.get("id"), where)
        gt_annotations.append(
            {
                "id": len(gt_annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": box,
                "area": area if area is not None else box[2] * box[3],
                "iscrowd": crowd,
            }
        )
        if crowd:
            continue
        x, y, w, h = box
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, info["width"]), min(y + h, info["height"])
        if x1 <= x0 or y1 <= y0:  # the detector's loss needs x1 > x0 and y1 > y0
            dropped += 1
            continue
        boxes[index[image_id]].append((x0, y0, x1, y1))
        cats[index[image_id]].append(category)
    targets = [
        {"boxes": np.asarray(b, dtype=np.float32).reshape(-1, 4), "category_ids": c}
        for b, c in zip(boxes, cats, strict=True)
    ]
    ground_truth = {
        "info": {},  # pycocotools 2.0.9 / 2.0.10 read it in loadRes
        "licenses": [],
        "images": [{k: v for k, v in i.items() if k != "path"} for i in images],
        "annotations": gt_annotations,
        "categories": categories,
    }
    return CocoDetection(images, targets, categories, path, ground_truth, flip, dropped)


def _check_names(
    categories: list[dict], named: set[int], model: Mapping[int, str], where: str
) -> None:
    """Refuse categories of the file whose name differs from the model's for the same id."""
    differ = [c for c in categories if c["id"] in named & model.keys()]
    differ = [c for c in differ if c["name"] != model[c["id"]]]
    if differ:
        shown = ", ".join(
            f"{c['id']} is {c['name']!r} here but {model[c['id']]!r} for the detector"
            for c in differ[:5]
        )
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise SgcnnError(
            f"{where} numbers its categories differently from the detector: category id {shown}"
            f"{more}; use annotations whose category ids and names match the detector's "
            f"({_listing(model)})"
        )


def _listing(model: Mapping[int, str]) -> str:
    pairs = [f"{i}: {model[i]!r}" for i in sorted(model)]
    return ", ".join(pairs[:10]) + (", ..." if len(pairs) > 10 else "")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SgcnnError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SgcnnError(f"cannot parse annotation file {path}: {err}") from err
    if not isinstance(data, dict):
        raise SgcnnError(f"{path} holds a {type(data).__name__}, not a COCO mapping")
    return data


def _int(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SgcnnError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def _category(entry, where: str) -> dict:
    if not isinstance(entry, dict) or "id" not in entry:
        raise SgcnnError(f"{where}: a category has no 'id': {entry!r}")
    cid = _int(entry["id"], "category id", where)
    if cid < 1:
        raise SgcnnError(f"{where}: category id {cid} must be >= 1 (0 is the background)")
    return {"id": cid, "name": str(entry.get("name", cid))}


def _image(entry, folder: Path, where: str) -> dict:
    if not isinstance(entry, dict) or not {"id", "file_name", "width", "height"} <= set(entry):
        raise SgcnnError(
            f"{where}: an image entry lacks id / file_name / width / height: {str(entry)[:120]}"
        )
    width = _int(entry["width"], "image width", where)
    height = _int(entry["height"], "image height", where)
    if width < 1 or height < 1:
        raise SgcnnError(f"{where}: image {entry['id']} has size {width}x{height}")
    return {
        "id": _int(entry["id"], "image id", where),
        "path": str(folder / str(entry["file_name"])),
        "width": width,
        "height": height,
    }


def _annotation(entry, where: str) -> tuple[int, int, list[float], int, float | None]:
    """``(image_id, category_id, bbox, iscrowd, area or None)`` of a checked annotation."""
    if not isinstance(entry, dict) or not {"image_id", "category_id", "bbox"} <= set(entry):
        raise SgcnnError(
            f"{where}: an annotation lacks image_id / category_id / bbox: {str(entry)[:120]}"
        )
    box = entry["bbox"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        or not all(math.isfinite(v) for v in box)
    ):
        raise SgcnnError(
            f"{where}: annotation {entry.get('id')} bbox must be 4 finite numbers [x, y, w, h], "
            f"got {box!r}"
        )
    image_id = _int(entry["image_id"], "annotation image_id", where)
    category = _int(entry["category_id"], "annotation category_id", where)
    crowd = _int(entry.get("iscrowd", 0), "annotation iscrowd", where)
    if crowd not in (0, 1):
        raise SgcnnError(
            f"{where}: annotation {entry.get('id')} iscrowd must be 0 or 1, got {crowd}"
        )
    area = entry.get("area")
    if area is not None and (
        isinstance(area, bool)
        or not isinstance(area, int | float)
        or not math.isfinite(area)
        or area < 0
    ):
        raise SgcnnError(
            f"{where}: annotation {entry.get('id')} area must be a number >= 0 (or absent), "
            f"got {area!r}"
        )
    return image_id, category, [float(v) for v in box], crowd, None if area is None else float(area)


def _check_box(box: list[float], info: dict, ann_id, where: str) -> None:
    x, y, w, h = box
    if w < 0 or h < 0:
        raise SgcnnError(
            f"{where}: annotation {ann_id} has a box of negative size ({w} x {h}); fix its "
            "bbox [x, y, w, h]"
        )
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > info["width"] + t or y + h > info["height"] + t:
        raise SgcnnError(
            f"{where}: annotation {ann_id} box [x, y, w, h] = {box} lies outside its image "
            f"{info['id']} ({info['width']}x{info['height']}); fix the bbox"
        )
