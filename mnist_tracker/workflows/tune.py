"""Hyper-parameter search: an Optuna study whose trials are ordinary training runs.

Contracts:
- The objective is the last epoch's validation accuracy on a seeded, class-balanced hold-out
  of the training set. The test files are not even read during the search.
- MLflow: one parent run per study (its id kept in the study's user attributes, so every
  worker nests its child runs under it), written through a ``RunSink`` like any run (an
  outage costs no data), and one child run per trial tagged ``optuna.study_name``,
  ``optuna.trial_number``, ``optuna.state``. Pruned trials end KILLED (a ``Pruning``
  callback's ``Stop``), failed ones FAILED, complete ones FINISHED.
- ``settings.trials`` is the study's total (``study.StudyLock``). With an RDB storage, trials
  send heartbeats; a trial whose worker died is marked FAIL after the grace period, its run
  ended FAILED, and it is retried by the surviving workers without counting twice. A journal
  has no heartbeats: there the worker's lock file (``liveness``) says it died, at once.
- A trial stopped by Ctrl-C or SIGTERM goes back to the study (``_give_back``): queued again
  with its params (before it turns FAIL, so no worker finds the study full meanwhile), FAIL,
  not counted; its run ends KILLED. The next worker runs it.
- A worker stops with one TuneError, no trial counted failed for it, when its tracking server
  is away (asked before each trial) or its study database is (``study.storage_lost``); and
  refuses to join a study whose parent run was deleted or whose ``SHARED`` settings differ.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import collector
from .. import data as data_mod
from ..config import TrainConfig, format_param
from ..errors import Interrupted, StoreError, TrackingUnavailable, TuneError, behind
from ..reporting import images
from ..tracking import (
    RunSink,
    RunSpec,
    artifacts,
    attached_run_id,
    check_reachable,
    open_run,
    set_tracking_uri,
    store,
)
from ..tracking.client import is_mlflow_error, is_unreachable, one_line, outage_reason
from ..training.callbacks import Callback, FitState, Stop
from ..training.runtime import resolve_runtime
from ..uris import redact, store_noun
from .liveness import WorkerFiles
from .study import (
    MODEL_ATTR,
    PARENT_ATTR,
    STORE_ATTR,
    StudyLock,
    StudyState,
    TuneSettings,
    check_direction,
    claim_model,
    config_from_params,
    heartbeat_enabled,
    make_pruner,
    make_sampler,
    open_storage,
    queue_retry,
    search_base,
    storage_error,
    storage_lost,
    study_state,
    suggest_config,
)
from .train import TrainOptions, train

EpochHook = Callable[[optuna.Trial, int, dict], None]


@dataclass
class TuneOutcome:
    study: optuna.Study
    parent_run_id: str
    best_value: float | None
    best_params: dict
    final_run_id: str | None
    counts: dict[str, int]


# ---------------------------------------------------------------------------------------------
# MLflow parent run


def _sink_of(run_id: str) -> RunSink:
    """The sink of run ``run_id`` (the parent, or a dead worker's trial) on the current URI."""
    return RunSink(run_id, set_tracking_uri(None))


def _ensure_parent(study: optuna.Study, settings: TuneSettings, base: TrainConfig) -> str:
    """The study's parent run id, creating the run (and logging the settings and the trials'
    ``base`` config) if absent.

    Call with the study lock held. Under ``mlflow run`` the run MLflow created is the parent.
    """
    params = _parent_params(study, settings, base)
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        _check_parent(study, existing, params)
        return existing
    tags = {"optuna.study_name": study.study_name, artifacts.ROLE_TAG: "study"}
    # Under ``mlflow run`` the parent is MLflow's run: tagged, not renamed.
    name = None if attached_run_id() else study.study_name
    run = open_run(RunSpec(settings.experiment, name, tags))
    run.sink.log_params(params)
    study.set_user_attr(PARENT_ATTR, run.run_id)
    study.set_user_attr(STORE_ATTR, redact(set_tracking_uri(None)))
    return run.run_id


# What every worker of a study must share (its parent's params): the total, and what makes
# trials comparable. The sampler and pruner are each worker's own objects but judge them.
SHARED = ("trials", "epochs", "sampler", "pruner", "val_size", "seed", "limit_train")


def _parent_params(study: optuna.Study, settings: TuneSettings, base: TrainConfig) -> dict:
    """The parent run's params: the search settings and the trials' ``base`` config."""
    params = {
        "model": settings.model,
        "trials": settings.trials,
        "timeout": settings.timeout,
        "epochs": base.epochs,
        "sampler": settings.sampler,
        "pruner": settings.pruner,
        "val_size": settings.val_size,
        "seed": settings.seed,
        "limit_train": base.limit_train,  # what the trials used: at most the images there are
        "storage": redact(settings.storage) or "memory",
        "study_name": study.study_name,
        "objective": "val_accuracy (maximize)",
    }
    return {k: format_param(v) for k, v in params.items()}


def _check_parent(study: optuna.Study, run_id: str, params: dict[str, str]) -> None:
    """TuneError when the study's parent run was deleted in MLflow (its trials would nest
    under a run in the trash, or, deleted for good, each fail at once), or when this worker's
    ``params`` differ from the study's in a ``SHARED`` setting (its trials would not compare
    with the others', or it would count to another total)."""
    try:
        run = store.existing_run(run_id)
    except StoreError:
        return  # away, or refused: not a verdict on the run
    experiment = None if run is None else store.experiment_of(run)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TuneError(
            f"study {study.study_name!r}: its experiment {experiment.name!r} is in MLflow's "
            f"trash; restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}) or pass a new --study-name"
        )
    if run is None or run.info.lifecycle_stage == "deleted":
        fix = (
            f"restore it (mlflow runs restore --run-id {run_id}) or pass a new --study-name"
            if run is not None
            else "pass a new --study-name"
        )
        here = redact(set_tracking_uri(None))
        if run is None:  # deleted for good, or in another store: which the study says
            logged_to = study.user_attrs.get(STORE_ATTR)
            if logged_to and logged_to != here:
                gone = f"is in tracking store {logged_to}, not in {here}"
                fix = f"pass --tracking-uri {logged_to}, or a new --study-name"
            else:
                gone = f"is not in tracking store {here} (deleted for good, or in another store)"
                fix = "pass the --tracking-uri of its first worker, or a new --study-name"
        else:
            gone = "is in MLflow's trash"
        raise TuneError(f"study {study.study_name!r}: its parent run {run_id} {gone}; {fix}")
    logged = run.data.params
    differ = [k for k in SHARED if k in logged and logged[k] != params[k]]
    if differ:
        started = ", ".join(f"--{k.replace('_', '-')} {logged[k] or '(unset)'}" for k in differ)
        raise TuneError(
            f"study {study.study_name!r} was started with {started}; pass the same to add a "
            "worker to it, or a new --study-name"
        )


def _finalize_parent(study: optuna.Study, parent_run_id: str, state: StudyState, say) -> None:
    """Log the study's results and figures to the parent run and end it FINISHED (or, with
    the server away, keep them in its outbox and say how to send them)."""
    sink = _sink_of(parent_run_id)
    metrics = {"n_complete": state.complete, "n_pruned": state.pruned, "n_failed": state.failed}
    if state.complete:
        best = study.best_trial
        metrics |= {"best_value": best.value, "best_trial_number": best.number}
        sink.log_params({f"best_{k}": format_param(v) for k, v in best.params.items()})
    sink.log_metrics(metrics)
    for name, png in study_figures(study, state).items():
        sink.log_bytes(png, f"optuna/{name}.png")
    sink.end("FINISHED")
    if sink.offline:
        say(
            f"the {store_noun(sink.uri)} went away ({sink.offline_reason}); the study's results "
            f"wait in {sink.outbox.folder}: send them with "
            f"`mnist-tracker sync {sink.outbox.folder}`"
        )


def study_figures(study: optuna.Study, state: StudyState) -> dict[str, bytes]:
    """Optuna's figures as PNG images (its matplotlib versions: previewed by the MLflow UI,
    offline; plotly's HTML would need plotly.js from the internet, or 5 MB a figure)."""
    from optuna.visualization import matplotlib as vis

    makers: dict[str, Callable] = {}
    if state.complete:
        makers["optimization_history"] = vis.plot_optimization_history
        makers["parallel_coordinate"] = vis.plot_parallel_coordinate
    if state.complete >= 2:
        makers["param_importances"] = vis.plot_param_importances
    if state.complete + state.pruned:
        makers["intermediate_values"] = vis.plot_intermediate_values
    figures = {}
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                figures[name] = images.figure_png(make(study))
            except (ValueError, RuntimeError):
                continue  # e.g. importances when every trial sampled the same values
    return figures


# ---------------------------------------------------------------------------------------------
# The worker


def tune(
    settings: TuneSettings,
    *,
    data_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    epoch_hook: EpochHook | None = None,
) -> TuneOutcome:
    """Run one worker of the study until the study holds ``settings.trials`` finished trials
    (or this worker's ``timeout`` passes), then, if this worker saw the study finish, log the
    results to the parent run and (``final``) train the best config on the full training set.

    Raises TuneError / ConfigError / DataError before any MLflow run when the input is bad.
    ``pruner`` overrides ``settings.pruner``; ``epoch_hook(trial, epoch, metrics)`` runs after
    each epoch of each trial (tests use it to make a trial fail).
    """
    settings.validate()
    base = settings.base_config()
    resolve_runtime(base)  # a device this machine lacks: refused before the study's runs
    say = echo or (lambda _line: None)
    study_name = settings.resolved_study_name()
    # Also proves the database answers, and is not the tracking store's.
    lock = StudyLock.open(settings.storage, study_name, set_tracking_uri(None))
    workers = None
    try:
        workers = WorkerFiles.open(settings.storage)  # a journal's: who runs which trial
        mnist = data_mod.load_mnist(data_dir, include_test=False)  # the search never reads test
        splits = data_mod.split_data(
            mnist, seed=base.seed, limit_train=base.limit_train, val_size=base.val_size
        )
        trial_base = search_base(base, len(splits.train_y))
        seed = settings.seed if settings.storage is None else None  # shared: each worker its own
        with lock.held():
            # Under the lock: the first workers to meet would otherwise race to create
            # Optuna's tables, the study and the parent run.
            study = optuna.create_study(
                study_name=study_name,
                storage=open_storage(settings),
                sampler=make_sampler(settings.sampler, seed),
                pruner=pruner or make_pruner(settings.pruner, base.epochs),
                direction="maximize",
                load_if_exists=True,
            )
            check_direction(study)  # before any trial or run
            claim_model(study, settings.model, _logged_model(study))
            with warnings.catch_warnings():  # experimental in Optuna, stable enough here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["val_accuracy"])  # named in optuna-dashboard, figures
            parent_run_id = _ensure_parent(study, settings, trial_base)
        say(f"study {study_name}: parent run {parent_run_id}")
        objective = _Objective(
            trial_base, splits, study_name, parent_run_id, settings, lock, say, epoch_hook, workers
        )
        try:
            try:
                finished = _work(study, settings, lock, objective, say)
            except (KeyboardInterrupt, Interrupted):
                if settings.storage is None:  # in memory: the study ends with this process
                    _end_parent_stopped(study, parent_run_id)
                raise
            return _conclude(study, finished, base, settings, data_dir, parent_run_id, lock, say)
        except Exception as exc:
            lost = storage_error(exc)
            if lost is None:
                raise
            raise storage_lost(settings.storage, lost) from None  # not Optuna's traceback
    finally:
        if workers is not None:
            workers.close()
        lock.close()


def _logged_model(study: optuna.Study) -> str | None:
    """The model a study's parent run logged, for a study created before ``claim_model``
    recorded it (None when there is no such run, or it says none)."""
    if MODEL_ATTR in study.user_attrs or PARENT_ATTR not in study.user_attrs:
        return None
    # existing_run: a store that cannot answer raises (StoreError) rather than read as "no
    # run", which would let the caller record --model on a study that searched another one.
    parent = store.existing_run(study.user_attrs[PARENT_ATTR])
    return None if parent is None else parent.data.params.get("model")


# A study user attribute: True while a worker trains (or has trained) the final run; False when
# it was stopped before the run existed, for a later worker to train it.
FINAL_CLAIM = "final_claimed"


def _conclude(study, finished, base, settings, data_dir, parent_run_id, lock, say) -> TuneOutcome:
    """Log the study's results once (the first worker to see it full) and train the final:
    that worker, or a later one when the final was stopped before its run existed (a final
    stopped later is resumed with ``train --resume``, as its line says)."""
    state = study_state(study)
    final_run_id = None
    owner = False
    if finished:
        with lock.held():
            if not study.user_attrs.get("results_logged"):
                _finalize_parent(study, parent_run_id, state, say)
                study.set_user_attr("results_logged", True)
                owner = settings.final and state.complete > 0
            elif study.user_attrs.get(FINAL_CLAIM) is False:  # released: stopped early
                owner = settings.final
            if owner:
                study.set_user_attr(FINAL_CLAIM, True)
        if owner:
            final_run_id = _train_final(study, base, data_dir, parent_run_id, say)
    best = study.best_trial if state.complete else None
    return TuneOutcome(
        study=study,
        parent_run_id=parent_run_id,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        final_run_id=final_run_id,
        counts={"complete": state.complete, "pruned": state.pruned, "failed": state.failed},
    )


def _work(study, settings: TuneSettings, lock: StudyLock, objective, say) -> bool:
    """Run trials until the study is full.

    True when this worker saw the study full with no trial left running, so it is the one to
    log the results. False when it timed out, or stops while other workers' last trials run
    (they log the results when they end).
    """
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    watched = heartbeat_enabled(study) or objective.workers is not None  # dead ones found
    checked: set[int] = set()
    uri = set_tracking_uri(None)
    while deadline is None or time.monotonic() < deadline:
        try:  # seconds, not MLflow's minutes of retries inside a trial that then fails
            check_reachable(uri)
        except TrackingUnavailable as exc:
            raise _server_away(uri, exc, None, objective, study, settings) from None
        lock.acquire()
        try:
            _fail_dead_trials(study, objective, say, checked)
            state = study_state(study)
            if state.waiting == 0 and state.counted >= settings.trials:
                if not state.running:
                    return True
                if not watched:
                    say("the study is full; other workers finish its last trials")
                    return False
                # With heartbeats (or a journal's worker files), wait: the running trial either
                # ends, or its worker died and it comes back as a retry that this worker then
                # runs. Waiting may last hours with no epoch to turn the collector on
                # (``collector``).
                collector.resume(freeze=False)
                lock.release()
                time.sleep(min(2.0, settings.heartbeat_interval))
                continue
            # optuna creates (or pops the waiting) trial, then calls the objective, which
            # releases the lock first thing: creation happens under the lock, training not.
            objective.next_trial(study)
            try:
                # Nothing caught: Optuna fails the trial, then re-raises its error here.
                study.optimize(objective, n_trials=1, catch=())
            except (KeyboardInterrupt, Interrupted):
                _stopped(study, objective, settings, say)
                raise
            except Exception as exc:
                # A signal while Optuna records a trial's result surfaces as Optuna's
                # UnboundLocalError, raised during it.
                signal = behind(exc, (KeyboardInterrupt, Interrupted))
                if signal is not None:
                    _stopped(study, objective, settings, say)
                    raise signal from None
                if _taken_over(study, objective.current, exc):
                    say(
                        f"trial {objective.current.number}: another worker took it for dead "
                        "(late heartbeats, or its worker file gone) and runs it again; this "
                        "result is dropped"
                    )
                    continue
                if exc is not objective.failed:
                    raise  # Optuna's own (its database gone: ``tune`` says so in one line)
                if not not_the_trials_fault(exc):
                    continue  # the trial failed and counts; the study goes on
                # The tracking server's or the database's: the trial goes back, the worker stops.
                with lock.held():
                    given = _give_back(study, objective.current)
                number = None if given is None else given[0]
                lost = storage_error(exc)
                if lost is not None:
                    raise storage_lost(settings.storage, lost) from None
                if is_unreachable(exc):
                    raise _server_away(uri, exc, number, objective, study, settings) from None
                raise _run_refused(uri, exc, number, settings.experiment) from None
        finally:
            lock.release()
    if settings.storage is None:  # in memory: no other worker will end the study
        say("timeout reached: the study ends here")
        return True
    say("timeout reached: this worker stops; the study goes on with the others")
    return False


def _fail_dead_trials(study: optuna.Study, objective, say, checked: set[int]) -> None:
    """Give back the trials whose worker died (heartbeats late, or a journal's worker file
    free) and end their runs FAILED. Call with the study lock held."""
    if heartbeat_enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # may enqueue retries
    elif objective.workers is not None:
        for orphan in objective.workers.orphans(study):
            given = _give_back(study, orphan, died=True)
            if given is not None:
                after = "it goes back to the study" if given[1] else "it counts as failed"
                say(f"trial {orphan.number}: its worker died; {after}")
    # Any storage: a given-back trial may have left a run its worker never heard of.
    _close_dead_trial_runs(study, objective.parent_run_id, say, checked)


def _running_ids(study: optuna.Study) -> set[int]:
    return {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def _stopped(study: optuna.Study, objective, settings: TuneSettings, say) -> None:
    """A signal stopped the worker in a trial: a trial whose training had returned its value is
    recorded COMPLETE (its run is FINISHED already), one that had failed on its own counts as
    failed, and any other goes back to the study, under the study lock (no worker counts the
    study meanwhile). A trial Optuna had created when the signal came, before the objective
    knew it, goes back too. (A run the server created while the signal came, its id never
    received, is ended by the next worker: ``_close_dead_trial_runs``.)"""
    trial, storage = objective.current, study._storage
    if trial is not None and objective.value is not None:
        if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            study.tell(trial, objective.value)
        return
    failed = objective.failed
    if trial is not None and failed is not None and not not_the_trials_fault(failed):
        _fail(storage, trial._trial_id)  # its own error: it counts
        return
    with objective.lock.held():
        if trial is None:  # no mark, no current trial: it stayed RUNNING for ever
            new = _running_ids(study) - objective.running_before
            trial = storage.get_trial(min(new)) if new else None
        # This attempt's run: the trial's user attributes may name an earlier attempt's (a
        # retry copies them), or, the signal inside their write, none.
        given = _give_back(study, trial, objective.run_id)
    if given is not None and settings.storage:
        say(f"trial {given[0]}: stopped; it goes back to the study, for the next worker")


def _end_parent_stopped(study: optuna.Study, parent_run_id: str, status: str = "KILLED"):
    """An in-memory study stopped (a signal: KILLED; its tracking store gone: FAILED): no
    worker will end its parent; end it with the results so far. Returns the parent's outbox
    folder when its end waits there (the store away), else None."""
    with contextlib.suppress(Exception):  # stopping: best effort
        sink = _sink_of(parent_run_id)
        state = study_state(study)
        sink.log_metrics({"n_complete": state.complete, "n_pruned": state.pruned})
        sink.end(status)
        return sink.outbox.folder if sink.unsent else None
    return None


def not_the_trials_fault(exc: BaseException) -> bool:
    """Whether a trial's error is its tracking server's (away, or refusing its run: a deleted
    experiment, a login's permissions) or its study database's (out of reach past
    ``study.OUTAGE_S``), not the trial's own: then the trial goes back to the study and the
    worker stops, instead of counting it failed and burning the next trials the same way."""
    return is_unreachable(exc) or is_mlflow_error(exc) or storage_error(exc) is not None


def _taken_over(study: optuna.Study, trial: optuna.Trial | None, exc: Exception) -> bool:
    """Whether Optuna refused to record ``trial``'s result because it is FAIL already: another
    worker took it for dead (heartbeats late: a paused machine) and queued it again."""
    if trial is None or "Cannot tell a FAIL trial" not in str(exc):
        return False
    return study._storage.get_trial(trial._trial_id).state == TrialState.FAIL


def _server_away(
    uri: str, exc: Exception, trial: int | None, objective, study: optuna.Study, settings
) -> TuneError:
    """The error that stops a worker whose tracking server went away: without it every
    remaining trial would fail at once (each counted), or sit through MLflow's retries. An
    in-memory study ends with this process: its parent run is ended FAILED (kept in its
    outbox, the store being away), and tune is to be started again, not this worker."""
    cause = exc.__cause__ if isinstance(exc, TrackingUnavailable) and exc.__cause__ else exc
    kept = len(objective.outboxes)
    if settings.storage is None:
        parent = _end_parent_stopped(study, objective.parent_run_id, "FAILED")
        kept += parent is not None
        back, who = "; this in-memory study ends here", "tune"
    else:
        back = "" if trial is None else f"; trial {trial} went back to the study"
        who = "this worker"
    sync = f"; send the runs it kept ({kept}) with `mnist-tracker sync`" if kept else ""
    return TuneError(
        f"the {store_noun(uri)} {redact(uri)} went away ({outage_reason(cause, uri)}){back}"
        f"{sync}; start {who} again once the {store_noun(uri, bare=True)} is back"
    )


def _run_refused(uri: str, exc: Exception, trial: int | None, experiment: str) -> TuneError:
    """The error that stops a worker whose tracking server refuses a trial's run: every later
    trial would be refused too, each counted failed. Names the fix for a deleted experiment."""
    back = "" if trial is None else f"; trial {trial} went back to the study"
    fix = "fix that (the experiment, the login's permissions) and start this worker again"
    with contextlib.suppress(Exception):  # a hint: the refusal is said either way
        found = store.experiment_by_name(experiment, deleted_too=True)
        if found is not None and found.lifecycle_stage == "deleted":
            fix = (
                f"its experiment {experiment!r} is in MLflow's trash: restore it (mlflow "
                f"experiments restore --experiment-id {found.experiment_id}) and start this "
                "worker again"
            )
    return TuneError(
        f"the tracking server {redact(uri)} refused the trial's run ({one_line(exc, uri)}){back}; "
        f"{fix}"
    )


def _give_back(
    study: optuna.Study,
    trial: optuna.Trial | FrozenTrial | None,
    run_id: str | None = None,
    *,
    died: bool = False,
) -> tuple[int, bool] | None:
    """Return a trial stopped by Ctrl-C or SIGTERM, or by its server going away, or whose
    worker ``died`` (a journal's, ``liveness``), to the study: queued again with its params
    (``study.queue_retry``; once: the objective may have queued it before Optuna failed it),
    then FAIL (Optuna leaves it RUNNING on SIGTERM, and a journal study, which has
    no heartbeats, would wait for it for ever), so that it does not count towards the total
    and the next worker runs it. Call with the study lock held: no worker counts the study
    between the two. Its run ``run_id`` (this attempt's, ended by ``train``; None when it has
    none, or the server is away) is tagged so. Returns (the trial's number, whether it was
    queued), or None when there was none to give back."""
    if trial is None:  # stopped before Optuna created the trial
        return None
    storage = study._storage
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state not in (TrialState.RUNNING, TrialState.FAIL):  # it had finished
        return None
    queued = queue_retry(study, frozen, died)  # first: never FAIL without its retry waiting
    _fail(storage, trial._trial_id)  # SIGTERM: Optuna catches Ctrl-C only
    if run_id:
        with contextlib.suppress(Exception):  # stopping: the tags are a courtesy
            error = "stopped by a signal; the trial went back to the study"
            _sink_of(run_id).set_tags({artifacts.OPTUNA_STATE_TAG: "FAIL", "error": error})
    return frozen.number, queued


def _fail(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Record trial ``trial_id`` FAIL if it is RUNNING (one that finished meanwhile stays so)."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _close_dead_trial_runs(study: optuna.Study, parent_run_id: str, say, checked: set[int]) -> None:
    """End FAILED the MLflow runs of trials whose worker died (the trial went FAIL by
    heartbeat while its run still says RUNNING). Runs are found by their tags, so a run the
    worker created just before dying is found too. ``checked`` remembers trial numbers done."""
    parent = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number in checked:
            continue
        parent = parent or store.get_run(parent_run_id)
        if parent is None:  # the server is away: look again on the next round
            return
        try:
            runs = store.search_runs(
                [parent.info.experiment_id],
                f"tags.mlflow.parentRunId = '{parent_run_id}' "
                f"and tags.`optuna.trial_number` = '{trial.number}' "
                "and attributes.status = 'RUNNING'",
            )
        except StoreError:
            return
        checked.add(trial.number)
        for run in runs:
            sink = _sink_of(run.info.run_id)
            error = "its worker stopped without ending this run (died, or gave the trial back)"
            error += "; the trial was retried"
            sink.set_tags({artifacts.OPTUNA_STATE_TAG: "FAIL", "error": error})
            sink.end("FAILED")
            say(
                f"trial {trial.number}: its worker stopped without ending run {run.info.run_id}; "
                "ended FAILED, the trial retried"
            )


def format_params(params: dict) -> str:
    """``lr=0.001234 batch_size=64``: floats to 4 significant digits, for one log line."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class Pruning(Callback):
    """Reports each epoch's validation accuracy to the trial; stops the fit when Optuna says
    prune (the run then ends KILLED, tagged ``optuna.state=PRUNED``)."""

    def __init__(self, trial: optuna.Trial, epoch_hook: EpochHook | None = None):
        self.trial, self.epoch_hook = trial, epoch_hook

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> Stop | None:
        if self.epoch_hook is not None:
            self.epoch_hook(self.trial, state.epoch, metrics)
        self.trial.report(metrics["val_accuracy"], state.epoch)
        if self.trial.should_prune():
            return Stop("KILLED", {artifacts.OPTUNA_STATE_TAG: "PRUNED"}, "pruned")
        return None


class _Objective:
    """One trial: suggest a config, train it as a child run, report val accuracy per epoch."""

    def __init__(
        self, base, splits, study_name, parent_run_id, settings, lock, say, epoch_hook, workers
    ):
        self.base, self.splits, self.study_name = base, splits, study_name
        self.parent_run_id, self.settings, self.lock, self.say = parent_run_id, settings, lock, say
        self.epoch_hook = epoch_hook
        self.current: optuna.Trial | None = None  # the trial being run, for ``_give_back``
        self.failed: Exception | None = None  # what the trial raised, if it failed
        self.value: float | None = None  # what the trial's training returned
        self.run_id: str | None = None  # this attempt's MLflow run, once it exists
        self.outboxes: list = []  # where trials that ended offline keep their runs
        self.workers: WorkerFiles | None = workers  # a journal's: marks this worker's trials
        self.running_before: set[int] = set()  # RUNNING trial ids before this worker's next

    def options(self, trial: optuna.Trial) -> TrainOptions:
        retry_of = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        tags = {
            "optuna.study_name": self.study_name,
            "optuna.trial_number": str(trial.number),
            artifacts.OPTUNA_STATE_TAG: "RUNNING",
        }
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        return TrainOptions(
            experiment=self.settings.experiment,
            run_name=f"{self.study_name}-trial-{trial.number}",
            tags=tags,
            parent_run_id=self.parent_run_id,
            attach=False,
            log_artifacts=False,
            checkpoints=False,  # a trial that stops is retried or pruned, never resumed
            status_tags={
                "FINISHED": {artifacts.OPTUNA_STATE_TAG: "COMPLETE"},
                "FAILED": {artifacts.OPTUNA_STATE_TAG: "FAIL"},
            },
            callbacks=(Pruning(trial, self.epoch_hook),),
            on_run_start=lambda run_id: self._run_started(trial, run_id),
        )

    def next_trial(self, study: optuna.Study) -> None:
        """Forget the last trial, before ``study.optimize`` (under the study lock: a RUNNING
        trial that is new after this is this worker's)."""
        self.current = self.failed = self.value = self.run_id = None
        self.running_before = _running_ids(study)

    def _queue_back(self, trial: optuna.Trial) -> None:
        """Queue the retry of a trial that goes back to the study (``_give_back`` fails it)
        while it is still RUNNING, before Optuna fails it: a worker counting the study in
        between would find it full, this trial failed, and log the results without it."""
        with contextlib.suppress(Exception), self.lock.held():  # else ``_give_back`` does
            queue_retry(trial.study, trial.storage.get_trial(trial._trial_id), died=False)

    def _run_started(self, trial: optuna.Trial, run_id: str) -> None:
        # Kept here first: a signal inside the trial's write could leave the trial's own copy
        # of its user attributes without the id (seen: the stopped run was not tagged FAIL).
        self.run_id = run_id
        trial.set_user_attr("mlflow_run_id", run_id)

    def __call__(self, trial: optuna.Trial) -> float:
        self.current, self.run_id = trial, None
        if self.workers is not None:  # before the lock goes: the trial's worker is this one
            self.workers.mark(trial.storage, trial._trial_id)
        self.lock.release()
        try:
            config = suggest_config(trial, self.base)  # writes the params: the database's
            self.say(f"trial {trial.number}: started")
            outcome = train(config, self.options(trial), splits=self.splits)
        except (KeyboardInterrupt, Interrupted):
            self._queue_back(trial)
            raise
        except Exception as exc:
            self.failed = exc
            if not_the_trials_fault(exc):  # the worker's stop says why
                if storage_error(exc) is None:  # the database away: its heartbeats do it
                    self._queue_back(trial)
            else:
                self.say(f"trial {trial.number}: failed ({type(exc).__name__}: {exc})")
            raise
        if outcome.result.stopped is not None:
            self.say(f"trial {trial.number}: pruned")
            raise optuna.TrialPruned()
        value = self.value = outcome.result.final["val_accuracy"]
        self.say(f"trial {trial.number}: val_accuracy {value:.4f}  {format_params(trial.params)}")
        if outcome.offline_reason is not None:  # the value counts; the run waits for sync
            self.outboxes.append(outcome.outbox)
            self.say(
                f"trial {trial.number}: the {store_noun(set_tracking_uri(None))} went away "
                f"({outcome.offline_reason}); "
                f"its run waits in {outcome.outbox}: send it with "
                f"`mnist-tracker sync {outcome.outbox}`"
            )
        return value


def _train_final(study, base, data_dir, parent_run_id, say) -> str | None:
    """Train the best trial's config on the whole training set, evaluate on test, log it.
    Called with the final claimed (``FINAL_CLAIM``): stopped or failed before its run exists,
    it releases the claim for the next worker; after, its line says how to resume it."""
    started: list[str] = []
    try:
        return _final_run(study, base, data_dir, parent_run_id, say, started)
    except BaseException as exc:
        if not started:  # no run to resume: the next worker trains it
            with contextlib.suppress(Exception):
                study.set_user_attr(FINAL_CLAIM, False)
        elif isinstance(exc, KeyboardInterrupt | Interrupted):
            command = f"mnist-tracker train --resume {started[0]}"
            command += f" --tracking-uri {redact(set_tracking_uri(None))}"
            command += f" --data-dir {data_dir}" if data_dir else ""
            say(f"final: stopped; continue it with: {command}")
        raise


def _final_run(study, base, data_dir, parent_run_id, say, started: list[str]) -> str:
    """``_train_final``'s run; ``started`` gets its id as soon as it exists."""
    config = config_from_params(base, study.best_trial.params).replace(val_size=0)
    images = (
        f"{base.limit_train:,} training images" if base.limit_train else "the full training set"
    )
    say(f"final: training the best config (trial {study.best_trial.number}) on {images}")

    def on_run_start(run_id: str) -> None:  # linked at once: a stopped final is resumable
        started.append(run_id)
        _sink_of(parent_run_id).set_tags({"final_run_id": run_id})

    options = TrainOptions(
        data_dir=data_dir,
        experiment=store.run_experiment_name(parent_run_id),
        run_name=f"{study.study_name}-best",
        tags={
            "optuna.study_name": study.study_name,
            "optuna.best_trial": str(study.best_trial.number),
            artifacts.ROLE_TAG: "study_result",
            "mnist_tracker.study_parent_run_id": parent_run_id,
        },
        attach=False,
        echo=say,
        on_run_start=on_run_start,
    )
    return train(config, options).run_id
