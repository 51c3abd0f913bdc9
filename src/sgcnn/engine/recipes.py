"""YAML recipes: the paper's experiments, shipped in ``sgcnn/recipes/`` (package data).

A recipe is named by its file stem (``lenet5_mnist_g``) or given as a path to any YAML file.
It holds a subset of :class:`~sgcnn.engine.config.Config`; what it leaves out keeps the
defaults, and ``--set`` overrides it.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sgcnn._io import read_text
from sgcnn.engine.config import yaml_problem
from sgcnn.errors import SgcnnError


def recipe_dir() -> Path:
    """The folder of the shipped recipes."""
    return Path(str(resources.files("sgcnn") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """The file of a shipped recipe name, or ``name_or_path`` itself if it is a file."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise SgcnnError(f"recipe {str(path)!r} is a folder; give a YAML file or a recipe name")
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise SgcnnError(f"recipe file {str(path)!r} does not exist")
        return path
    shipped = recipe_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    if path.is_file():
        return path
    names = list_recipes()
    close = [n for n in names if n.startswith(name_or_path)] or difflib.get_close_matches(
        name_or_path, names, n=3
    )
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SgcnnError(
        f"unknown recipe {name_or_path!r}.{hint} Shipped recipes: {', '.join(names)}; "
        "or give the path of a YAML file."
    )


def load_recipe(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """``(name, mapping)`` of a recipe; the name is its ``name:`` entry or its file stem."""
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(read_text(path, "recipe"))
    except yaml.YAMLError as err:
        raise SgcnnError(
            f"cannot read recipe {str(path)!r}: not valid YAML: {yaml_problem(err)}"
        ) from err
    if data is None:  # an empty file would silently run every default
        raise SgcnnError(
            f"recipe {str(path)!r} is empty; write its sections (model:, data:, train:, ...) "
            "or name a shipped recipe (`sgcnn run --help` lists them)"
        )
    if not isinstance(data, dict):
        raise SgcnnError(f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...)")
    return str(data.get("name") or path.stem), data
