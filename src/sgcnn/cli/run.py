"""``sgcnn run RECIPE``: a whole experiment from a YAML recipe (name or path)."""

from __future__ import annotations

from sgcnn.cli import COMMANDS
from sgcnn.cli._pipeline import (
    add_run_args,
    configure,
    execute_and_print,
    output_dir,
    shortcut_sets,
)
from sgcnn.engine.recipes import list_recipes, load_recipe


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help=COMMANDS["run"],
        description="Run a recipe end to end in its own folder. Shipped recipes: "
        + ", ".join(list_recipes()),
    )
    p.add_argument("recipe", help="shipped recipe name (e.g. lenet5_mnist_g) or a YAML file")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    name, recipe = load_recipe(args.recipe)
    config = configure(recipe, shortcut_sets(args, {}) + args.sets, resume=args.resume)
    if config.name is None:
        config.name = name
    return execute_and_print(config, output_dir(args, config, name), args)
