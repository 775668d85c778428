"""The lab's results table, rebuilt from the tracking store.

Flow: ``find_experiments`` -> ``bulk.read_runs`` (a SQL store, no filter) or
``store.search_runs`` (paged) -> ``runs_frame``
(one row per training run) -> ``select_rows`` (best / latest per model, or all) ->
``results_table`` (the lab's columns first) -> ``render.render`` (table, markdown, csv, json).

Contracts:
- Only runs that logged a ``model`` param count as training runs; other runs in the same
  experiments (the run ``mlflow run`` creates for ``compare``) are ignored. A tuner's parent run
  (tag ``artifacts.ROLE_TAG`` = ``study``) logs a ``model`` param too but is no training run: it
  is never a row and ``Comparison.n_runs`` does not count it.
- The table holds data: ``model`` is the registry key (``deep_cnn``), metrics at full precision.
  ``render`` shows the lab's display names and rounding (table, markdown) or rounds away float
  noise for scripts (csv, json).
- Unfinished runs (RUNNING, FAILED, KILLED, SCHEDULED) are filtered out by MLflow's search itself
  unless ``include_unfinished`` is set, so they never leave the store. A RUNNING run whose
  heartbeat stopped (``tracking.lease.is_stale``) shows the status STALE.
- Rows are sorted by the chosen metric, best first (lower is better for losses and times), runs
  without that metric last, ties broken by the later start time.
- Only the query reads the store; metric histories and artifacts are fetched by ``report`` and
  only for the rows it shows.
- Every user mistake raises ``CompareError`` with a one-line message naming the fix.

The store is read through ``tracking.store`` only; rendering is ``render.py``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pandas as pd

from ..constants import DEFAULT_EXPERIMENT
from ..constants import RUN_MODES as MODES
from ..errors import CompareError, InvalidQuery
from ..tracking import bulk, lease, registry, store
from ..tracking.artifacts import ROLE_TAG

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

DEFAULT_METRIC = "test_accuracy"
SEARCH_SYNTAX_URL = "https://mlflow.org/docs/latest/ml/search/search-runs/"

# Registry name -> the lab's display name (GUIDE section 2); other names are shown as they are.
DISPLAY_NAMES = {
    "cnn": "CNN",
    "deep_cnn": "Deep CNN",
    "vgg16": "VGG16",
    "alexnet": "AlexNet",
    "vit": "ViT",
}

# The lab's own results (GUIDE section 2): the yardstick, never measured here.
LAB_RESULTS = pd.DataFrame(
    {
        "model": ["CNN", "Deep CNN", "VGG16", "AlexNet", "ViT"],
        "accuracy_pct": [99.38, 99.40, 99.08, 99.26, 97.97],
        "f1_macro": [0.9938, 0.9940, 0.9908, 0.9926, 0.9797],
        "training_time_s": [88.29, 101.16, 996.34, 333.10, 189.49],
    }
)

# Metrics already shown by a lab column; any other --metric gets a column of its own.
SHOWN_METRICS = {"test_accuracy", "test_f1_macro", "training_time_s"}

STUDY_ROLE = "study"  # ROLE_TAG of a tuner's parent run: not a training run

# The data a run saw (params logged by ``workflows.train``), shown after epochs, batch size, lr.
DATA_PARAMS = ("train_size", "test_size", "image_size", "pretrained")
# Every param ``runs_frame`` reads.
FRAME_PARAMS = ("model", "epochs", "batch_size", "lr", *DATA_PARAMS, "precision", "device")


@dataclass(frozen=True)
class Query:
    """What to compare: experiments by name (or all), an MLflow filter, which runs per model."""

    experiments: tuple[str, ...] = (DEFAULT_EXPERIMENT,)
    all_experiments: bool = False
    filter_string: str = ""
    mode: str = "best"
    metric: str = DEFAULT_METRIC
    include_unfinished: bool = False


@dataclass
class Comparison:
    """The answer: the shown rows (``results_table`` columns) and where they came from."""

    table: pd.DataFrame
    query: Query
    experiment_names: list[str]
    n_runs: int  # training runs considered before selection
    registry_unread: str | None = None  # why the Registry column is empty, when it was not read


def display_name(model: str) -> str:
    """The lab's name for a registry model (``deep_cnn`` -> ``Deep CNN``); others unchanged."""
    return DISPLAY_NAMES.get(model, model)


def lower_is_better(metric: str) -> bool:
    """Losses and times rank ascending; everything else (accuracy, F1, throughput) descending."""
    return metric.endswith(("loss", "_time_s", "_time"))


class UnknownExperiment(CompareError):
    """An experiment the query names is not in the store; ``problem`` says which, and which
    the store has, for a caller that words its own fix."""

    def __init__(self, name: str, known: str):
        self.problem = f"experiment {name!r} not found in the tracking store (it has: {known})"
        super().__init__(f"{self.problem}; pass an existing --experiment, or --all-experiments")


class NoRuns(CompareError):
    """No training run matches the query in the experiments ``names``."""

    def __init__(self, query: Query, names: Sequence[str]):
        super().__init__(_empty_message(query, names))
        self.names = list(names)


def find_experiments(client: MlflowClient, query: Query) -> list[Experiment]:
    """The active experiments the query names (all of them with ``all_experiments``).

    Raises UnknownExperiment (a CompareError) naming it and the ones the store has.
    """
    if query.all_experiments:
        found = store.all_experiments(client)
        if not found:
            raise CompareError("the tracking store has no experiments; train a model first")
        return found
    found = []
    for name in dict.fromkeys(query.experiments):  # keep order, drop repeats
        experiment = store.experiment_by_name(name, client)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in store.all_experiments(client))) or "none"
            raise UnknownExperiment(name, known)
        found.append(experiment)
    return found


def search_filter(query: Query) -> str:
    """The MLflow filter string: the user's, AND status FINISHED unless unfinished are wanted.

    MLflow's grammar only joins clauses with AND, so appending one is always valid.
    """
    clauses = [query.filter_string.strip()] if query.filter_string.strip() else []
    if not query.include_unfinished:
        clauses.append("attributes.status = 'FINISHED'")
    return " and ".join(clauses)


def _number(text: str | None, kind: type) -> float | int | None:
    """A param string as ``kind``; None when absent, empty or not a finite number (and, for
    an int, one outside int64: a run MLflow logged by hand with ``epochs=inf`` or
    ``train_size=1e20`` stopped ``compare`` with a traceback)."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if abs(value) < 2**63 else None
    return value


def _metric(value: float) -> float:
    """A metric as logged, where MLflow's SQL stores keep an infinite value (a diverged loss)
    as the largest float: infinite again, not a 309-digit number in the table."""
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def _flag(text: str | None) -> bool | None:
    """A boolean param (``format_param`` writes ``true`` / ``false``); None when absent."""
    lowered = (text or "").strip().lower()
    return True if lowered == "true" else False if lowered == "false" else None


def is_training_run(run: Run) -> bool:
    """A run that logged a ``model`` param and is not a tuner's parent (``ROLE_TAG`` study)."""
    return bool(run.data.params.get("model")) and run.data.tags.get(ROLE_TAG) != STUDY_ROLE


def frame_metrics(metric: str) -> list[str]:
    """The metrics ``runs_frame`` reads: the lab's columns, and ``metric``."""
    return list(dict.fromkeys(["test_accuracy", "test_f1_macro", "training_time_s", metric]))


def runs_frame(runs: Sequence[Run], metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """One row per training run (``is_training_run``): ids, params, result metrics.

    Metrics are the runs' latest values; ``start_time`` is in ms since the epoch. A run without
    a metric holds NaN for it; a missing int param is NA, a missing ``pretrained`` NA too.
    """
    metrics = frame_metrics(metric)
    rows = []
    for run in runs:
        if not is_training_run(run):
            continue
        params = run.data.params
        row = {
            "model_key": params["model"],
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or "",
            "status": "STALE" if lease.is_stale(run) else run.info.status,
            "start_time": run.info.start_time or 0,
            "epochs": _number(params.get("epochs"), int),
            "batch_size": _number(params.get("batch_size"), int),
            "lr": _number(params.get("lr"), float),
            "train_size": _number(params.get("train_size"), int),
            "test_size": _number(params.get("test_size"), int),
            "image_size": _number(params.get("image_size"), int),
            "pretrained": _flag(params.get("pretrained")),
            "precision": params.get("precision", ""),
            "device": params.get("device", ""),
        }
        for key in metrics:
            row[key] = _metric(run.data.metrics.get(key, math.nan))
        rows.append(row)
    columns = ["model_key", "run_id", "run_name", "status", "start_time", "epochs"]
    columns += ["batch_size", "lr", *DATA_PARAMS, "precision", "device", *metrics]
    frame = pd.DataFrame(rows, columns=columns)
    for key in ("epochs", "batch_size", "train_size", "test_size", "image_size"):
        frame[key] = frame[key].astype("Int64")
    frame["pretrained"] = frame["pretrained"].astype("boolean")
    return frame


def select_rows(frame: pd.DataFrame, mode: str, metric: str) -> pd.DataFrame:
    """The rows to show, sorted by ``metric`` best first (NaN last, then newest first).

    ``best``: per model the run with the best metric value (a model whose runs all lack the
    metric keeps its latest run); ``latest``: per model the most recent run; ``all``: every run.
    """
    if mode not in MODES:
        raise CompareError(f"unknown --runs {mode!r}; pass one of {', '.join(MODES)}")
    if metric not in frame.columns or frame[metric].isna().all():
        raise CompareError(
            f"none of the {len(frame)} matching training runs logged the metric {metric!r}; "
            "pass --metric with a logged one, e.g. test_accuracy, test_f1_macro or "
            "training_time_s"
        )
    ranked = frame.sort_values(
        [metric, "start_time"],
        ascending=[lower_is_better(metric), False],
        na_position="last",
        kind="mergesort",
    )
    if mode == "best":
        ranked = ranked.drop_duplicates("model_key", keep="first")
    elif mode == "latest":
        newest = frame.sort_values("start_time", ascending=False, kind="mergesort")
        keep = set(newest.drop_duplicates("model_key", keep="first")["run_id"])
        ranked = ranked[ranked["run_id"].isin(keep)]
    return ranked.reset_index(drop=True)


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time, to the second."""
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def results_table(selected: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The output columns (``HEADERS`` order; plus ``metric`` when no lab column shows it).

    ``model`` is the registry key (``display_name`` gives the lab's name), ``accuracy_pct`` the
    test accuracy in percent, ``f1_macro`` the macro F1 in [0, 1], ``training_time_s`` seconds,
    ``train_size`` / ``test_size`` image counts, ``image_size`` the side the network saw,
    ``pretrained`` True / False / NA, ``start_time`` ISO UTC. Full precision is kept; display
    names and rounding are left to ``render``.
    """
    table = pd.DataFrame(
        {
            "model": selected["model_key"],
            "accuracy_pct": selected["test_accuracy"] * 100.0,
            "f1_macro": selected["test_f1_macro"],
            "training_time_s": selected["training_time_s"],
            "epochs": selected["epochs"],
            "batch_size": selected["batch_size"],
            "lr": selected["lr"],
            **{key: selected[key] for key in DATA_PARAMS},
            "precision": selected["precision"],
            "device": selected["device"],
            "run_name": selected["run_name"],
            "run_id": selected["run_id"],
            "start_time": selected["start_time"].map(iso_time),
            "status": selected["status"],
            "registry": "",  # filled by ``compare`` from the model registry
        }
    )
    if metric not in SHOWN_METRICS:
        table[metric] = selected[metric]
    return table.reset_index(drop=True)


def compare(client: MlflowClient, query: Query) -> Comparison:
    """Run ``query`` against the store ``client`` talks to.

    Raises CompareError for an unknown experiment (UnknownExperiment), a filter MLflow
    rejects, no matching training runs (NoRuns), or a metric none of them logged;
    ``StoreError`` when the store cannot be read.
    """
    experiments = find_experiments(client, query)
    names = [e.name for e in experiments]
    try:
        with store.gc_paused():  # also while the runs become rows: see store.gc_paused
            runs = _read_runs(client, [e.experiment_id for e in experiments], query)
            frame = runs_frame(runs, query.metric)
            del runs
    except InvalidQuery as exc:
        raise CompareError(
            f"MLflow rejected --filter {query.filter_string!r}: {exc}; "
            f"fix the filter (syntax: {SEARCH_SYNTAX_URL})"
        ) from None
    if frame.empty:
        raise NoRuns(query, names)
    selected = select_rows(frame, query.mode, query.metric)
    table = results_table(selected, query.metric)
    holders, unread = registry.alias_holders(client)
    table["registry"] = [", ".join(holders.get(run_id, [])) for run_id in table["run_id"]]
    return Comparison(table, query, names, len(frame), registry_unread=unread)


def _read_runs(client: MlflowClient, experiment_ids: list[str], query: Query) -> Sequence:
    """The runs ``runs_frame`` turns into rows. From a SQL store without a --filter, only the
    keys the table needs, read straight from its tables (``bulk.read_runs``: 100,000 runs in
    seconds, not minutes); otherwise MLflow's search, which alone parses filters."""
    if not query.filter_string.strip():
        runs = bulk.read_runs(
            client.tracking_uri,
            experiment_ids,
            finished_only=not query.include_unfinished,
            params=FRAME_PARAMS,
            metrics=frame_metrics(query.metric),
            tags=(ROLE_TAG, *lease.STALE_TAGS),
        )
        if runs is not None:
            return runs
    return store.search_runs(experiment_ids, search_filter(query), mlflow_client=client)


def _empty_message(query: Query, names: Sequence[str]) -> str:
    where = ", ".join(repr(n) for n in names)
    what = "training runs" if query.include_unfinished else "finished training runs"
    if query.filter_string.strip():
        where += f" matching --filter {query.filter_string.strip()!r}"
    hint = "train one with `mnist-tracker train --model cnn`"
    if not query.include_unfinished:
        hint += ", or pass --include-unfinished"
    return f"no {what} in experiment {where}; {hint}"
