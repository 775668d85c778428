"""Train several models one after another, each its own run, all tagged with one suite id.

Contracts:
- ``suite_configs`` resolves every model's config up front (ConfigError names the model), so
  bad input stops the suite before anything trains. Options that only some models take
  (``image_size`` for the resizable ones, ``pretrained`` and ``freeze`` for those with ImageNet
  weights) are applied to those models only.
- ``run_suite`` trains the configs in order; a model that raises any ``Exception`` (weights
  unavailable, out of memory, a bug) is recorded as failed and the next one starts. Ctrl-C and
  SIGTERM (BaseExceptions) stop the suite, the current run marked KILLED by ``train``.
- Every run carries the tag ``artifacts.SUITE_TAG`` = the suite id; ``suite_filter`` finds them
  again.
- Under ``mlflow run`` (``$MLFLOW_RUN_ID`` set) the project's run becomes the suite's parent:
  each model trains in a child run nested under it, in its experiment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import data as data_mod
from ..config import TrainConfig, resolve_config
from ..errors import ConfigError
from ..models import get_spec, list_specs
from ..tracking import artifacts, attached_run_id, store
from .data import splits_for
from .train import TrainOptions, train

SUITE_TAG = artifacts.SUITE_TAG


@dataclass(frozen=True)
class ModelOutcome:
    """One model's fate: its run id when it finished, else the one-line reason it failed."""

    model: str
    run_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SuiteResult:
    suite_id: str
    experiment: str
    outcomes: list[ModelOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if not o.ok]


def all_models() -> list[str]:
    """Every registered model, in registry order (the lab's five)."""
    return [spec.name for spec in list_specs()]


def parse_models(text: str) -> list[str]:
    """``"cnn, vit"`` -> ``["cnn", "vit"]``: registered names, in order, repeats dropped.

    Raises ConfigError for an empty list or an unknown name.
    """
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"--models is empty; pass e.g. --models {','.join(all_models())}")
    for name in names:
        get_spec(name)  # raises ConfigError naming the known models
    return names


# The overrides that only some models take, and which: the rest go to every model.
_SCOPED = {
    "image_size": lambda spec: spec.resizable,
    "pretrained": lambda spec: spec.has_pretrained,
    "freeze": lambda spec: spec.has_pretrained,
}


def suite_configs(models: Sequence[str], **overrides: Any) -> list[TrainConfig]:
    """One validated config per model: its recipe plus the overrides that apply to it.

    ``image_size`` goes to resizable models only, ``pretrained`` and ``freeze`` to models with
    ImageNet weights only; every other override (None = recipe) goes to all. Raises
    ConfigError prefixed with the model's name.
    """
    scoped = {key: overrides.pop(key, None) for key in _SCOPED}
    configs = []
    for name in models:
        spec = get_spec(name)
        extra = {key: value if _SCOPED[key](spec) else None for key, value in scoped.items()}
        try:
            configs.append(resolve_config(name, **overrides, **extra))
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return configs


def suite_filter(suite_id: str) -> str:
    """The MLflow filter string selecting the runs of one suite."""
    return f"tags.`{SUITE_TAG}` = '{suite_id}'"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def run_suite(
    configs: Sequence[TrainConfig],
    mnist: data_mod.MNIST,
    *,
    experiment: str,
    suite_id: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Train ``configs`` one after another; a failing model does not stop the others.

    Returns each model's outcome; the experiment is the parent's under ``mlflow run``.
    """
    suite_id = suite_id or uuid.uuid4().hex
    say = echo or (lambda _line: None)
    parent = attached_run_id()
    if parent is not None:
        experiment = store.run_experiment_name(parent)
    result = SuiteResult(suite_id, experiment)
    for i, config in enumerate(configs, start=1):
        say(f"[{i}/{len(configs)}] {config.model}: {config.epochs} epoch(s)")
        try:
            splits = splits_for(config, mnist)
            options = TrainOptions(
                experiment=experiment,
                run_name=f"{config.model}-suite-{suite_id[:8]}",
                tags={SUITE_TAG: suite_id},
                echo=echo,
                parent_run_id=parent,
                attach=False,
            )
            outcome = train(config, options, splits=splits)
        except Exception as exc:  # any failure of one model; Ctrl-C / SIGTERM propagate
            result.outcomes.append(ModelOutcome(config.model, error=_one_line(exc)))
            say(f"[{i}/{len(configs)}] {config.model} failed: {_one_line(exc)}")
        else:
            result.outcomes.append(ModelOutcome(config.model, run_id=outcome.run_id))
    return result


def summary_lines(result: SuiteResult) -> list[str]:
    """One line per model (finished with its run id, or failed with why), then a total."""
    lines = [
        f"{o.model:<9} finished  run {o.run_id}" if o.ok else f"{o.model:<9} FAILED    {o.error}"
        for o in result.outcomes
    ]
    done = len(result.outcomes) - len(result.failed)
    lines.append(
        f"suite {result.suite_id}: {done} of {len(result.outcomes)} model(s) finished"
        + (f", {len(result.failed)} failed" if result.failed else "")
    )
    return lines
