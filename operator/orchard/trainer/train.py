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
from orchard.artifacts.metadata import Metadata
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


def train(
    job: TrainingJob, output: str | None = None, trial: int = 0, keep_existing: bool = False
) -> TrainerReport:
    """Train, evaluate, gate, write the artifact; return the report for the operator.

    With `keep_existing` (what the operator's Jobs ask), an artifact this very training
    already wrote at the destination is reported as it is, not trained and written again
    (`earlier_run`). Raises a `TrainerError` subclass on any failure, with nothing written.
    """
    started = time.monotonic()
    spec = job.spec
    task = task_of(spec.estimator.name)
    params = effective_params(job, trial)
    estimator = build_estimator(spec.estimator.name, params, spec.evaluation.random_state)
    destination = output_uri(job, output, trial)
    shown = redact_uri(destination)  # what the logs, the result and the ModelVersion show
    check_destination(destination)
    if keep_existing and (found := earlier_run(job, destination, trial)) is not None:
        metadata, digest = found
        log.info("artifact %s %s: written by an earlier run of this training; kept", shown, digest)
        return report_of(job, metadata, digest, shown, trial, time.monotonic() - started)
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


def earlier_run(job: TrainingJob, destination: str, trial: int) -> tuple[Metadata, str] | None:
    """The artifact at `destination`, when it is whole (every digest checks) and this
    training wrote it (its TrainingJob, namespace and trial): a pod of the Job started
    again after another finished (a node lost, the Job controller's own restart) must
    not replace what a ModelVersion may already pin. None for anything else: nothing
    there, or half an artifact, which this run overwrites."""
    from orchard.artifacts import fetch_artifact, sha256_bytes
    from orchard.artifacts.metadata import METADATA_FILE

    with tempfile.TemporaryDirectory(prefix="orchard-existing-") as tmp:
        try:
            directory, metadata = fetch_artifact(destination, None, Path(tmp))
            raw = (directory / METADATA_FILE).read_bytes()
        except (ArtifactError, OSError):
            return None
    source = metadata.source
    if (source.training_job, source.namespace, source.trial) != (
        job.metadata.name, job.metadata.namespace, trial,
    ):  # fmt: skip
        return None
    return metadata, sha256_bytes(raw)


def report_of(
    job: TrainingJob, metadata: Metadata, digest: str, shown: str, trial: int, seconds: float
) -> TrainerReport:
    """The report of an artifact already written (`earlier_run`), as its run reported it."""
    gate = job.spec.gate
    return TrainerReport(
        artifact_uri=shown,
        digest=digest,
        model=metadata.model,
        task=metadata.task,
        metrics=metadata.metrics,
        framework=metadata.framework.model_dump(),
        dataset={"uri": metadata.dataset.uri, "digest": metadata.dataset.digest},
        trial=trial,
        params=dict(metadata.estimator.params),
        gate=gate_verdict(gate, metadata.metrics) if gate is not None else None,
        duration_seconds=round(seconds, 3),
        inputs=[{"name": c.name, "type": c.type} for c in metadata.inputs],
        collected=metadata.collected.model_dump(mode="json", exclude_none=True)
        if metadata.collected is not None
        else None,
    )
