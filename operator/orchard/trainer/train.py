"""One training run, start to finish: spec in, artifact and result out.

The order is chosen to fail fast and cheaply: the estimator and its hyperparameters are
checked before any data is fetched, the data is checked before anything is fitted, and
nothing is written unless the run succeeded (and, outside a search, passed its gate).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import ArtifactError, UnsupportedURI, local_path, put_dir, redact_uri
from orchard.contracts import TrainerReport
from orchard.trainer.artifact import (
    feature_stats,
    library_versions,
    plain,
    sklearn_version,
    write_artifact,
)
from orchard.trainer.checks import column_type, run_checks
from orchard.trainer.collected import append_collected
from orchard.trainer.data import load_dataset
from orchard.trainer.errors import ArtifactStoreError, InvalidSpec
from orchard.trainer.estimators import build_estimator, task_of
from orchard.trainer.evaluate import check_gate, fit_and_evaluate, gate_verdict
from orchard.trainer.preprocess import build_pipeline, build_preprocessor, input_schema
from orchard.trainer.search import trial_params

log = logging.getLogger("orchard.trainer")

# Credentials for an s3:// artifact store: ORCHARD_ARTIFACTS_AWS_* win over plain AWS_*.
ARTIFACTS_ENV_PREFIX = "ORCHARD_ARTIFACTS_"


def output_uri(job: TrainingJob, output: str | None, trial: int) -> str:
    """Where this run's artifact goes.

    `output` (the --output flag) names the artifact directory; without it the trainer
    uses ``<spec.artifacts.uri>/<model>/<TrainingJob name>``, and with neither it has
    nowhere to write (`InvalidSpec`; the operator always passes --output). In a search
    every trial writes to its own ``trial-<N>`` directory below, since all pods of an
    Indexed Job share one command line.
    """
    if output is None:
        if job.spec.artifacts is None:
            raise InvalidSpec(
                "no artifact store: pass --output or set spec.artifacts.uri",
                parameter="artifacts.uri",
            )
        name = job.metadata.name or "local"
        output = f"{job.spec.artifacts.uri.rstrip('/')}/{job.spec.model}/{name}"
    output = output.rstrip("/")
    if job.spec.search is not None:
        output = f"{output}/trial-{trial}"
    return output + "/"


def check_destination(destination: str) -> None:
    """`InvalidSpec` for an artifact URI the store will not write (a local path outside
    the mounted volumes, a bad claim), checked before an hour of training, not after."""
    if urlsplit(destination).scheme not in ("", "file", "pvc"):
        return
    try:
        local_path(destination)
    except UnsupportedURI as exc:
        raise InvalidSpec(f"artifacts.uri: {exc}", parameter="artifacts.uri") from exc


def effective_params(job: TrainingJob, trial: int) -> dict[str, Any]:
    """The spec's hyperparameters, overridden by this trial's in a search."""
    params = dict(job.spec.estimator.params)
    if job.spec.search is not None:
        params.update(trial_params(job.spec.search, job.spec.evaluation.random_state, trial))
    return params


def train(job: TrainingJob, output: str | None = None, trial: int = 0) -> TrainerReport:
    """Train, evaluate, gate, write the artifact; return the report for the operator.

    Raises a `TrainerError` subclass on any failure, with nothing written.
    """
    started = time.monotonic()
    spec = job.spec
    task = task_of(spec.estimator.name)
    params = effective_params(job, trial)
    estimator = build_estimator(spec.estimator.name, params, spec.evaluation.random_state)
    destination = output_uri(job, output, trial)
    shown = redact_uri(destination)  # what the logs, the result and the ModelVersion show
    check_destination(destination)
    log.info("trial %d: %s(%s) -> %s", trial, spec.estimator.name, params, shown)

    data = load_dataset(spec.dataset)
    log.info("dataset %s: %d rows, %s", data.uri, len(data.frame), data.digest)
    collected: dict[str, Any] | None = None
    if spec.dataset.collected is not None:
        data, rows = append_collected(data, spec.dataset)
        collected = rows.info()
    features = run_checks(data.frame, data.target, spec.dataset.features, spec.dataset.checks, task)
    frame = data.frame.dropna(subset=[data.target])  # a row without a label teaches nothing
    schema = input_schema(frame, features)
    pipeline = build_pipeline(build_preprocessor(schema, spec.preprocessing), estimator)

    # What the spec named may be quoted from a library's message; nothing else of the data.
    named = [spec.estimator.name, data.target, *(spec.dataset.features or [])]
    named += [*params, *(str(v) for v in params.values())]
    evaluated = fit_and_evaluate(
        pipeline, frame[features], frame[data.target], task, spec.evaluation, named=named
    )
    log.info("metrics: %s", evaluated.metrics)
    verdict = gate_verdict(spec.gate, evaluated.metrics) if spec.gate is not None else None
    if spec.gate is not None and spec.search is None:
        check_gate(spec.gate, evaluated.metrics)

    y = frame[data.target]
    output_info: dict[str, Any] = {"name": data.target, "type": column_type(y)}
    if task == "classification":
        output_info["classes"] = [plain(c) for c in evaluated.pipeline.classes_]
    fields = {
        "model": spec.model,
        "task": task,
        "estimator": {"name": spec.estimator.name, "params": params},
        "metrics": evaluated.metrics,
        "framework": {"name": "scikit-learn", "version": sklearn_version()},
        "libraries": library_versions(),
        "dataset": {
            "uri": data.uri,
            "digest": data.digest,
            "rows": len(frame),
            "target": data.target,
        },
        "inputs": schema,
        "output": output_info,
        "featureStats": feature_stats(frame, schema),
        "predictionStats": evaluated.prediction_stats,
        "calibration": evaluated.calibration,
        "collected": collected,
        "source": {
            "trainingJob": job.metadata.name,
            "namespace": job.metadata.namespace,
            "trial": trial,
        },
    }
    with tempfile.TemporaryDirectory(prefix="orchard-artifact-") as tmp:
        metadata, digest = write_artifact(
            Path(tmp),
            evaluated.pipeline,
            fields,
            evaluated.heldout,
            target=data.target,
            seed=spec.evaluation.random_state,
        )
        try:
            put_dir(Path(tmp), destination, s3_env_prefix=ARTIFACTS_ENV_PREFIX)
        except ArtifactError as exc:
            raise ArtifactStoreError(f"cannot write the artifact to {shown}: {exc}") from exc
    log.info("artifact %s %s", shown, digest)

    return TrainerReport(
        artifact_uri=shown,
        digest=digest,
        model=spec.model,
        task=task,
        metrics=evaluated.metrics,
        framework=metadata.framework.model_dump(),
        dataset={"uri": data.uri, "digest": data.digest},
        trial=trial,
        params=params,
        gate=verdict,
        duration_seconds=round(time.monotonic() - started, 3),
        inputs=schema,
        collected=collected,
    )
