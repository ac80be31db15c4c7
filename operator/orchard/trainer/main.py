"""`orchard train`: run the training a TrainingJob describes, in a Job's pod or locally.

    orchard train -f trainingjob.yaml --output file:///tmp/models/iris
    orchard train -f - < trainingjob.json            # the object on stdin
    ORCHARD_TRAININGJOB='{"apiVersion": ...}' orchard train --output pvc://artifacts/iris/run-1

The result (or the error) is one JSON line on stdout and in the termination message;
progress goes to stderr. Exit status: 0 on success, 1 on a failure with a reason
(DataCheckFailed, GateFailed, ...), 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml
from pydantic import ValidationError

from orchard.api.trainingjob import TrainingJob
from orchard.trainer.errors import InvalidSpec, TrainerError, TrainingError, without_data
from orchard.trainer.result import failure, report

TRAININGJOB_ENV = "ORCHARD_TRAININGJOB"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

log = logging.getLogger("orchard.trainer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        help=f"the TrainingJob as YAML or JSON; '-' reads stdin (default: ${TRAININGJOB_ENV})",
    )
    parser.add_argument(
        "--output",
        help="URI of the artifact directory: file:///dir, pvc://<claim>/<path>, s3://bucket/prefix "
        "(default: <spec.artifacts.uri>/<model>/<name>; required without spec.artifacts); "
        "a search writes to <output>/trial-<N>/",
    )
    parser.add_argument(
        "--keep-existing",
        action="store_true",
        help="report an artifact this training already wrote at the destination (a pod "
        "started again after another finished) instead of training and writing it again; "
        "what the operator's Jobs pass",
    )
    parser.add_argument(
        "--trial",
        type=int,
        default=None,
        help=f"search trial index (default: ${COMPLETION_INDEX_ENV}, else 0)",
    )
    parser.add_argument(
        "--termination-log",
        default=None,
        help="file for the result (default: $ORCHARD_TERMINATION_LOG, else /dev/termination-log "
        "when it exists)",
    )


def read_spec_text(filename: str | None) -> str:
    """The TrainingJob's text from a file, stdin, or the environment."""
    if filename == "-":
        return sys.stdin.read()
    if filename:
        try:
            with open(filename, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise InvalidSpec(f"cannot read the TrainingJob from {filename}: {exc}") from exc
    text = os.environ.get(TRAININGJOB_ENV)
    if not text:
        raise InvalidSpec(f"no TrainingJob: pass -f FILE, -f - (stdin), or set ${TRAININGJOB_ENV}")
    return text


def parse_training_job(text: str) -> TrainingJob:
    """A TrainingJob from YAML or JSON text, validated by the API model."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"the TrainingJob is not valid YAML or JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind", "TrainingJob") != "TrainingJob":
        raise InvalidSpec("expected one TrainingJob object")
    try:
        return TrainingJob.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidSpec(f"invalid TrainingJob: {problems}") from exc


def trial_index(explicit: int | None) -> int:
    """--trial, else the Indexed Job's completion index, else 0."""
    if explicit is not None:
        return explicit
    raw = os.environ.get(COMPLETION_INDEX_ENV, "")
    try:
        return int(raw) if raw else 0
    except ValueError as exc:
        raise InvalidSpec(f"${COMPLETION_INDEX_ENV} is not an integer: {raw!r}") from exc


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    trial: int | None = None
    try:
        trial = trial_index(args.trial)
        job = parse_training_job(read_spec_text(args.filename))
        from orchard.trainer.train import train  # the heavy imports, after the cheap checks

        result = train(job, args.output, trial, keep_existing=args.keep_existing)
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc.message)
        report(failure(exc, trial), args.termination_log)
        return 1
    except Exception as exc:  # the message must still reach the operator
        log.exception("training failed")  # the traceback stays in the pod's log
        err = TrainingError(f"{type(exc).__name__}: {without_data(str(exc))}")
        report(failure(err, trial), args.termination_log)
        return 1
    report(result, args.termination_log)
    return 0
