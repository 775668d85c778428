"""Promote the best run's model: register it and point an alias (``champion``) at it.

``promote(settings)`` picks the best FINISHED training run by a metric (overall, or of one
model) exactly as ``compare`` ranks them, registers its logged model as a new version of
``settings.name`` (``mnist``, or ``mnist-<model>`` for one model; a version already made from
that run is reused) and moves the alias. ``models:/NAME@ALIAS`` then loads it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import DEFAULT_EXPERIMENT
from ..errors import CompareError
from ..models.specs import get_spec
from ..reporting.compare import NoRuns, Query, UnknownExperiment, compare
from ..tracking import artifacts, client, store
from ..tracking.registry import Promotion, check_names
from ..tracking.registry import promote as register_and_alias


@dataclass(frozen=True)
class PromoteSettings:
    metric: str = "test_f1_macro"
    alias: str = "champion"
    model: str | None = None  # one model's best, else the best overall
    name: str | None = None  # the registered model [default: mnist, or mnist-<model>]
    experiments: tuple[str, ...] = (DEFAULT_EXPERIMENT,)

    def registered_name(self) -> str:
        if self.name is not None:  # as given, even empty: check_names refuses that
            return self.name
        return "mnist" if self.model is None else f"mnist-{self.model}"


@dataclass(frozen=True)
class PromoteOutcome:
    promotion: Promotion
    run_id: str
    model: str
    value: float


def promote(settings: PromoteSettings) -> PromoteOutcome:
    """Register the best run's model and move the alias (see the module's contract).

    Raises, before anything is registered, ConfigError for an unknown model and
    RegistryError for a name or alias the registry would refuse; then CompareError when no
    finished training run matches or the best one has no logged model, and RegistryError
    when the registry refuses.
    """
    if settings.model is not None:
        get_spec(settings.model)  # ConfigError for a model mnist-tracker does not have
    check_names(settings.registered_name(), option="--name")
    check_names(alias=settings.alias, option="--alias")
    filter_string = f"params.model = '{settings.model}'" if settings.model else ""
    query = Query(settings.experiments, filter_string=filter_string, mode="all",
                  metric=settings.metric)  # fmt: skip
    try:
        best = compare(client(), query).table.iloc[0]
    except UnknownExperiment as exc:  # compare's own fixes name options promote lacks
        raise CompareError(f"{exc.problem}; pass an existing --experiment") from None
    except NoRuns as exc:
        runs = f"{settings.model} runs" if settings.model else "training runs"
        where = ", ".join(repr(n) for n in exc.names)
        raise CompareError(
            f"no finished {runs} in experiment {where}; train one with `mnist-tracker train "
            f"--model {settings.model or 'cnn'}`, or pass the --experiment they were logged to"
        ) from None
    run = store.existing_run(best["run_id"])  # StoreError when the store cannot say
    model_uri = run.data.tags.get(artifacts.MODEL_URI_TAG) if run is not None else None
    if not model_uri:
        raise CompareError(
            f"the best run by {settings.metric}, {best['run_id']}, has no logged model (a "
            "search trial, or logged before mnist-tracker named its models); train one"
        )
    promotion = register_and_alias(
        model_uri, settings.registered_name(), settings.alias, best["run_id"]
    )
    value = run.data.metrics[settings.metric]
    return PromoteOutcome(promotion, best["run_id"], best["model"], float(value))
