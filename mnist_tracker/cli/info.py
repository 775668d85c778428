"""``models`` and ``data check``: what the registry holds, and whether the MNIST files are good."""

from __future__ import annotations

import click

from .options import data_dir_option, flag


@click.command("models")
def models_cmd() -> None:
    """List the registered models with their recipes and parameter counts."""
    from ..models import list_specs

    header = (
        f"{'name':<9} {'params':>12} {'trainable':>12} {'input':>9} {'optim':<6} "
        f"{'lr':>7} {'wd':>7} {'epochs':>6} {'sched':<6}  description"
    )
    click.echo(header)
    for spec in list_specs():
        r = spec.recipe
        size = f"{spec.input.image_size}x{spec.input.channels}"
        click.echo(
            f"{spec.name:<9} {spec.n_params:>12,} {spec.n_trainable:>12,} {size:>9} "
            f"{r['optimizer']:<6} {r['lr']:>7.0e} {r['weight_decay']:>7.0e} {r['epochs']:>6} "
            f"{r.get('scheduler', 'none'):<6}  {spec.description}"
        )
    fast = [spec for spec in list_specs() if spec.fast_recipe]
    if fast:
        click.echo("\n--recipe fast (changes to the lab's recipe):")
        for spec in fast:
            changes = ", ".join(f"{k}={v}" for k, v in spec.fast_recipe.items())
            click.echo(f"  {spec.name:<9} {changes}")


@click.group("data")
def data_group() -> None:
    """Inspect the MNIST files."""


@data_group.command("check")
@data_dir_option
@flag("download", "Download the files when they are missing.", default=False)
def data_check(data_dir, download) -> None:
    """Verify the MNIST files (magic, sizes, sha256) and print the counts."""
    from ..data import label_counts, load_mnist

    mnist = load_mnist(data_dir, download_missing=download)
    click.echo(f"MNIST in {mnist.source}: verified")
    for split, y in (("train", mnist.train_y), ("test", mnist.test_y)):
        counts = " ".join(str(c) for c in label_counts(y))
        click.echo(f"  {split:<5} {len(y):>6} images; per digit 0-9: {counts}")
