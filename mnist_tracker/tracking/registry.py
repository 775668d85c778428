"""The model registry: register a run's logged model, move an alias, say who holds which.

Aliases (``models:/NAME@champion``) are MLflow's replacement for the deprecated stages.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from ..errors import RegistryError, clip
from ..uris import redact
from .client import (
    client,
    is_auth_refusal,
    is_login_refusal,
    is_unreachable,
    outage_reason,
)


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str
    previous: str | None  # the version the alias pointed at before, if any


# MLflow's own checks of a registered model's name and an alias, by the names they have had:
# private functions that MLflow 3.18 renamed (``_validate_model_alias_name`` became
# ``_validate_alias_name``). A test holds that each check is found in the MLflow installed.
NAME_CHECKS = {
    "name": ("_validate_model_name",),
    "alias": ("_validate_alias_name", "_validate_model_alias_name"),
    "reserved alias": ("_validate_alias_name_reserved", "_validate_model_alias_name_reserved"),
}


def mlflow_check(kind: str):
    """MLflow's check for ``kind`` (a key of ``NAME_CHECKS``), or None where this MLflow has
    none under a name known here (the registry then refuses, only later)."""
    from mlflow.utils import validation

    for name in NAME_CHECKS[kind]:
        if hasattr(validation, name):
            return getattr(validation, name)
    return None


def check_names(name: str | None = None, alias: str | None = None, *, option: str) -> None:
    """RegistryError, before anything is trained or registered, for a registered-model
    ``name`` or an ``alias`` the registry would refuse, by MLflow's own rules (names without
    ``/`` or ``:``; aliases of letters, digits, ``_`` and ``-``, not ``latest`` or ``v<N>``).
    ``option`` names where the value came from, for the fix."""
    checks = [(name, "name"), (alias, "alias"), (alias, "reserved alias")]
    for value, kind in checks:
        check = mlflow_check(kind)
        if value is None or check is None:
            continue
        try:
            check(value)
        except MlflowException as exc:
            reason = clip(exc.message, 300).rstrip(".")
            raise RegistryError(f"{reason}; pass another {option}") from None


def promote(model_uri: str, name: str, alias: str, run_id: str) -> Promotion:
    """Register ``model_uri`` (a run's logged model) as a new version of ``name`` and point
    ``alias`` at it. A version of ``name`` already made from ``run_id`` is reused, so
    promoting the same run twice registers it once. A refused promotion leaves no registered
    model it created: one without versions (the run's logged model gone) stayed behind."""
    c = client()
    created = registering = False
    try:
        previous = _alias_version(name, alias)
        existing = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if existing:
            version = existing[0].version
        else:  # creates the registered model the first time; resolves models:/ URIs
            created, registering = not _exists(name), True
            # MLflow prints "Successfully registered model" before it tries the version, which
            # may still be refused; the command says what happened itself.
            with contextlib.redirect_stderr(io.StringIO()):
                version = mlflow.register_model(model_uri, name).version
            registering = False
        c.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        if created and not c.search_model_versions(f"name = '{name}'"):
            with contextlib.suppress(MlflowException):
                c.delete_registered_model(name)
        # The registry's own URI: $MLFLOW_REGISTRY_URI may name another store than tracking's.
        registry_uri = mlflow.get_registry_uri()
        registry = f"the model registry at {redact(registry_uri)}"
        if is_auth_refusal(exc):  # the login, not the run: training again would not help
            fix = (
                "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
                if is_login_refusal(exc)
                else f"ask its admin for EDIT on the registered model {name}"
            )
            raise RegistryError(
                f"{registry} refused {name}@{alias} to this login ({clip(exc.message, 300)}); {fix}"
            ) from None
        if is_unreachable(exc):  # away, or a transient error (MLflow 3.18 does not resend)
            raise RegistryError(
                f"{registry} did not complete {name}@{alias} for run "
                f"{run_id} ({outage_reason(exc, registry_uri)}); run the same promote again "
                "(a run is registered once)"
            ) from None
        fix = (  # the run's model could not be registered: most likely it is gone
            "; train again, or delete that run so that the next best is picked"
            if registering
            else ""
        )
        raise RegistryError(
            f"the registry refused {name}@{alias} for run {run_id} ({clip(exc.message, 300)}){fix}"
        ) from None
    return Promotion(name, str(version), alias, previous)


def _exists(name: str) -> bool:
    try:
        client().get_registered_model(name)
    except MlflowException:
        return False
    return True


def _alias_version(name: str, alias: str) -> str | None:
    try:
        return client().get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def alias_holders(mlflow_client=None) -> tuple[dict[str, list[str]], str | None]:
    """``{run_id: ["NAME@alias (vN)", ...]}`` for every alias in the registry (one search,
    then one look-up per alias; registries hold few), and None; or ``{}`` and why the registry
    could not be read (one line, e.g. the server's auth refused this login the registry), for
    the caller to say: a table without its aliases must not look like one without any."""
    c = mlflow_client or client()
    holders: dict[str, list[str]] = {}
    try:
        models = c.search_registered_models(max_results=1000)
        for model in models:
            for alias, version in sorted((model.aliases or {}).items()):
                run_id = c.get_model_version(model.name, version).run_id
                holders.setdefault(run_id, []).append(f"{model.name}@{alias} (v{version})")
    except MlflowException as exc:
        return {}, clip(" ".join(str(exc).split()), 200)
    return holders, None
