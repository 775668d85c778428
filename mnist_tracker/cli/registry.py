"""``promote`` and ``predict``: the model registry as users use it."""

from __future__ import annotations

import click

from ..constants import DEFAULT_EXPERIMENT
from ..uris import redact
from .options import check_experiments, connect, option, tracking_uri_option
from .train import echo_err


@click.command("promote")
@option("--metric", default="test_f1_macro", show_default=True, help="What makes a run the best.")
@option("--alias", default="champion", show_default=True, help="The alias to move.")
@option("--model", "model_name", default=None, help="Best run of this model [default: any].")
@option("--name", default=None, help="Registered model [default: mnist, or mnist-<model>].")
@option(
    "--experiment",
    "experiments",
    multiple=True,
    callback=check_experiments,
    help=f"Experiment(s) to search; repeatable [default: {DEFAULT_EXPERIMENT}].",
)
@tracking_uri_option
def promote_cmd(metric, alias, model_name, name, experiments, tracking_uri) -> None:
    """Register the best finished run's model and point an alias (champion) at it.

    The best run is ranked as `compare` ranks (lower is better for *loss and *_time_s).
    Load it anywhere with models:/NAME@ALIAS, e.g. `mnist-tracker predict --model-uri
    models:/mnist@champion digit.png`.
    """
    from ..workflows.promote import PromoteSettings, promote

    uri = connect(tracking_uri, existing=True)
    settings = PromoteSettings(
        metric=metric,
        alias=alias,
        model=model_name,
        name=name,
        experiments=experiments or (DEFAULT_EXPERIMENT,),
    )
    outcome = promote(settings)
    p = outcome.promotion
    moved = f"(was v{p.previous})" if p.previous and p.previous != p.version else "(new)"
    if p.previous == p.version:
        moved = "(already there)"
    click.echo(
        f"{p.name} version {p.version}: {outcome.model} run {outcome.run_id} ({metric} "
        f"{outcome.value:.4f}); alias {p.alias} -> v{p.version} {moved}"
    )
    echo_err(f"load it with models:/{p.name}@{p.alias} (tracking store {redact(uri)})")


@click.command("predict")
@option(
    "--model-uri",
    required=True,
    help="The model: models:/NAME@ALIAS (see `promote`) or runs:/RUN_ID/MODEL.",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@tracking_uri_option
def predict_cmd(model_uri, images, tracking_uri) -> None:
    """Classify the digits in IMAGES (PNG, JPEG: one digit each, any size, dark on light or
    light on dark; IDX images files: every digit), prepared as MNIST's were."""
    from ..workflows.predict import predict

    # A model in a folder needs no store; models:/ and runs:/ need the one they are in.
    connect(tracking_uri, existing=model_uri.startswith(("models:", "runs:")))
    for p in predict(model_uri, images):
        click.echo(f"{p.source}: {p.digit} (probability {p.probability:.3f})")
