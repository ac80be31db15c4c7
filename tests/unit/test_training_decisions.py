"""A TrainingJob's outcome, decided from Job and pod status as the API server returns them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from orchard.api.common import get_condition
from orchard.api.trainingjob import Artifacts, Search, TrainingJobSpec, TrainingJobStatus
from orchard.contracts import ReportedError, TrainerFailureReport, TrainerReport
from orchard.decisions.jobs import pods_may_exist
from orchard.decisions.training import (
    NO_ARTIFACT_STORE,
    NO_ARTIFACT_STORE_MESSAGE,
    Outcome,
    TrainerFailure,
    artifact_store,
    best_trial,
    latest_by_index,
    next_version,
    parse_termination_message,
    pod_report,
    primary_metric,
    registered_version,
    training_outcome,
    training_status,
    trials_for_status,
)

T0 = "2026-11-27T10:00:00Z"
T1 = "2026-11-27T10:01:30Z"
DIGEST = "sha256:" + "ab" * 32


def result_message(trial: int | None = None, **metrics: float) -> str:
    body: dict[str, Any] = {
        "artifactUri": f"pvc://orchard-artifacts/penguins/penguins-rf-{trial or 0}/",
        "digest": DIGEST,
        "metrics": metrics or {"accuracy": 0.97},
        "framework": {"name": "scikit-learn", "version": "1.7.2"},
        "inputs": [{"name": "bill_length_mm", "type": "number"}],
        "dataset": {"uri": "builtin:iris", "digest": "sha256:" + "cd" * 32},
        "params": {"max_depth": trial},
    }
    if trial is not None:
        body["trial"] = trial
    return json.dumps(body)


def error_message(reason: str, message: str) -> str:
    return json.dumps({"error": {"reason": reason, "message": message}})


def job(
    *,
    conditions: list[dict[str, Any]] | None = None,
    completions: int = 1,
    indexed: bool = False,
    **status: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"completions": completions, "parallelism": 1, "backoffLimit": 0}
    if indexed:
        spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "penguins-rf", "namespace": "ml"},
        "spec": spec,
        "status": {"startTime": T0, **status, "conditions": conditions or []},
    }


def cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": T1,
        "lastTransitionTime": T1,
    }


def pod(
    name: str = "penguins-rf-x7k2q",
    *,
    phase: str = "Running",
    index: int | None = None,
    terminated: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None,
    created: str = T0,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if terminated is not None:
        state["terminated"] = {
            "startedAt": T0,
            "finishedAt": T1,
            "containerID": "containerd://abc",
            **terminated,
        }
    elif waiting is not None:
        state["waiting"] = waiting
    else:
        state["running"] = {"startedAt": T0}
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "creationTimestamp": created}
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
        meta["labels"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "localhost/orchard/trainer:dev",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        },
    }


def succeeded_pod(index: int | None = None, **metrics: float) -> dict[str, Any]:
    return pod(
        f"penguins-rf-{index or 0}-abcde",
        phase="Succeeded",
        index=index,
        terminated={
            "exitCode": 0,
            "reason": "Completed",
            "message": result_message(index, **metrics),
        },
    )


def failed_pod(
    message: str, *, index: int | None = None, reason: str = "Error", code: int = 1
) -> dict[str, Any]:
    return pod(
        f"penguins-rf-{index or 0}-fffff",
        phase="Failed",
        index=index,
        terminated={"exitCode": code, "reason": reason, "message": message},
    )


SEARCH = Search.model_validate(
    {
        "parameters": {"max_depth": [2, 4, 8, 16]},
        "maxTrials": 4,
        "parallelism": 2,
        "objective": {"metric": "accuracy", "direction": "maximize"},
    }
)


# --- termination messages --------------------------------------------------------


def test_result_message_parses() -> None:
    parsed = parse_termination_message(result_message(2, accuracy=0.9, f1_macro=0.8))
    assert isinstance(parsed, TrainerReport)
    assert parsed.digest == DIGEST
    assert parsed.metrics == {"accuracy": 0.9, "f1_macro": 0.8}
    assert parsed.trial == 2
    assert parsed.dataset["digest"].startswith("sha256:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            error_message("DataCheckFailed", "column 'species' is missing"),
            TrainerFailure("DataCheckFailed", "column 'species' is missing"),
        ),
        # FallbackToLogsOnError: the log tail, whose last line is the report
        (
            "loading data\nfitting\n" + error_message("GateFailed", "accuracy 0.5 < 0.9"),
            TrainerFailure("GateFailed", "accuracy 0.5 < 0.9"),
        ),
        ("Traceback (most recent call last):\n  ...\nMemoryError", None),
        ("", None),
        (None, None),
        ('{"not": "ours"}', None),
    ],
)
def test_failure_messages_parse(text: str | None, expected: TrainerFailure | None) -> None:
    assert parse_termination_message(text) == expected


def test_credentials_in_a_trainer_report_are_redacted() -> None:
    """An older trainer image may still report a presigned URL or quote one in an error."""
    presigned = "https://h.test/p.csv?X-Amz-Signature=hunter2"
    body = json.loads(result_message(None))
    body["dataset"]["uri"] = presigned
    parsed = parse_termination_message(json.dumps(body))
    assert isinstance(parsed, TrainerReport)
    assert parsed.dataset["uri"] == "https://h.test/p.csv?X-Amz-Signature=REDACTED"
    failure = parse_termination_message(
        error_message("DatasetUnavailable", f"cannot download {presigned}: HTTP Error 403")
    )
    assert failure == TrainerFailure(
        "DatasetUnavailable",
        "cannot download https://h.test/p.csv?X-Amz-Signature=REDACTED: HTTP Error 403",
    )
    report = pod_report(
        {
            "metadata": {"name": "p"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {
                            "terminated": {"exitCode": 1, "message": f"fetching {presigned}"}
                        },
                    }
                ],
            },
        }
    )
    assert report.failure is not None and "hunter2" not in report.failure.message


def test_non_finite_metrics_are_dropped() -> None:
    text = result_message(None).replace('"accuracy": 0.97', '"accuracy": 0.97, "roc_auc": NaN')
    parsed = parse_termination_message(text)
    assert isinstance(parsed, TrainerReport)
    assert parsed.metrics == {"accuracy": 0.97}


def test_the_report_the_trainer_writes_is_the_one_the_operator_reads() -> None:
    report = TrainerReport(
        artifact_uri="pvc://orchard-artifacts/penguins/penguins-rf/",
        digest=DIGEST,
        model="penguins",
        task="classification",
        metrics={"accuracy": 0.97},
        framework={"name": "scikit-learn", "version": "1.7.2"},
        dataset={"uri": "builtin:penguins", "digest": DIGEST},
        trial=0,
        params={"max_depth": 4, "criterion": None},
        gate={"passed": True, "metric": "accuracy", "value": 0.97, "min": 0.9},
        duration_seconds=1.9,
        inputs=[{"name": "bill_length_mm", "type": "number"}],
    )
    wire = report.wire()
    assert list(wire) == [  # the shape docs/artifact-format.md gives, in its order
        "artifactUri", "digest", "model", "task", "metrics", "framework", "dataset", "trial",
        "params", "gate", "durationSeconds", "inputs",
    ]  # fmt: skip
    assert wire["params"] == {"max_depth": 4, "criterion": None}
    assert parse_termination_message(json.dumps(wire)) == report
    assert "gate" not in report.model_copy(update={"gate": None}).wire()

    failure = TrainerFailureReport(
        error=ReportedError.model_validate(
            {"reason": "GateFailed", "message": "accuracy 0.5 < 0.9", "metric": "accuracy"}
        )
    )
    assert failure.wire() == {
        "error": {"reason": "GateFailed", "message": "accuracy 0.5 < 0.9", "metric": "accuracy"},
        "trial": None,
    }
    assert parse_termination_message(json.dumps(failure.wire())) == TrainerFailure(
        "GateFailed", "accuracy 0.5 < 0.9"
    )


def test_an_older_trainers_report_still_parses() -> None:
    """Only what the operator needs is required; what it does not know is ignored."""
    minimal = {"artifactUri": "pvc://a/b/", "digest": DIGEST, "metrics": {"r2": 1}}
    parsed = parse_termination_message(json.dumps({**minimal, "newField": {"x": 1}}))
    assert parsed == TrainerReport(artifact_uri="pvc://a/b/", digest=DIGEST, metrics={"r2": 1.0})
    assert parse_termination_message('{"error": {}}') == TrainerFailure("TrainingError", "")


def test_fields_of_the_wrong_type_are_left_out_not_the_report() -> None:
    body = json.loads(result_message(None))
    body |= {"trial": "3", "task": 7, "inputs": "x", "gate": [], "durationSeconds": "1s"}
    body["metrics"] = {"accuracy": 0.9, "flag": True, "name": "x", "n": 3, "inf": 1e400}
    body["metrics"]["huge"] = 10**400  # an integer no double holds
    body["framework"] = {"name": "scikit-learn", "version": 1.7}
    body["dataset"] = {"uri": "builtin:iris", "digest": None, "rows": 150}
    parsed = parse_termination_message(json.dumps(body))
    assert isinstance(parsed, TrainerReport)
    assert parsed.metrics == {"accuracy": 0.9, "n": 3.0}
    assert (parsed.trial, parsed.task, parsed.inputs, parsed.gate) == (None, None, [], None)
    assert parsed.duration_seconds is None
    assert parsed.framework == {"name": "scikit-learn", "version": "1.7"}
    assert parsed.dataset == {"uri": "builtin:iris", "rows": "150"}


@pytest.mark.parametrize(
    "body",
    [
        {"digest": DIGEST},
        {"artifactUri": 5, "digest": DIGEST},
        {"artifactUri": "pvc://a/b/", "digest": ["sha256:"]},
        {"artifactUri": "pvc://a/b/", "digest": DIGEST, "metrics": [0.9]},
        {"artifactUri": "pvc://a/b/", "digest": DIGEST, "framework": "scikit-learn"},
        {"error": "out of memory"},
    ],
)
def test_a_malformed_report_ends_as_no_report_did(body: dict[str, Any]) -> None:
    """Exit 0: NoResult; exit 1: TrainingError quoting the message."""
    text = json.dumps(body)
    assert parse_termination_message(text) is None
    done = pod(
        phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": text}
    )
    complete = job(succeeded=1, completionTime=T1, conditions=[cond("Complete")])
    assert (training_outcome(complete, [done]).reason, pod_report(done).failure) == (
        "NoResult",
        TrainerFailure("NoResult", "the trainer exited 0 but reported no result"),
    )
    failed = training_outcome(
        job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded")]), [failed_pod(text)]
    )
    assert (failed.phase, failed.reason) == ("Failed", "TrainingError")
    assert failed.message.startswith("the trainer exited with code 1: {")


# --- single runs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_job", "pods", "phase", "reason", "in_message"),
    [
        (None, [], "Pending", "JobMissing", "does not exist"),
        (job(active=1), [], "Pending", "JobCreated", "waiting"),
        (
            job(active=1, ready=0),
            [pod(phase="Pending", waiting={"reason": "ContainerCreating"})],
            "Pending",
            "JobCreated",
            "waiting",
        ),
        (job(active=1, ready=1), [pod()], "Running", "Training", "penguins-rf-x7k2q"),
        (
            job(
                succeeded=1,
                completionTime=T1,
                conditions=[cond("SuccessCriteriaMet"), cond("Complete")],
            ),
            [succeeded_pod(accuracy=0.97, f1_macro=0.95)],
            "Succeeded",
            "Trained",
            "accuracy=0.97",
        ),
        (
            job(
                failed=1,
                conditions=[
                    cond("FailureTarget", "BackoffLimitExceeded"),
                    cond(
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ],
            ),
            [
                failed_pod(
                    error_message("DataCheckFailed", "dataset has no column 'species' (the target)")
                )
            ],
            "Failed",
            "DataCheckFailed",
            "no column 'species'",
        ),
        (
            job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded")]),
            [failed_pod(error_message("GateFailed", "accuracy=0.61 is below the gate min 0.9"))],
            "Failed",
            "GateFailed",
            "below the gate",
        ),
        (
            job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded")]),
            [failed_pod("", reason="OOMKilled", code=137)],
            "Failed",
            "OutOfMemory",
            "memory",
        ),
        (
            job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded")]),
            [failed_pod("Traceback ...\nValueError: boom")],
            "Failed",
            "TrainingError",
            "ValueError: boom",
        ),
        (
            job(
                active=0,
                conditions=[
                    cond(
                        "Failed",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    )
                ],
            ),
            [pod(phase="Failed")],
            "Failed",
            "DeadlineExceeded",
            "deadline of 3600s",
        ),
        (
            job(active=1),
            [
                pod(
                    phase="Pending",
                    waiting={
                        "reason": "ErrImageNeverPull",
                        "message": "Container image is not present",
                    },
                )
            ],
            "Failed",
            "ImageProblem",
            "ErrImageNeverPull",
        ),
        (
            job(active=1),
            [
                pod(
                    phase="Pending",
                    waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"},
                )
            ],
            "Failed",
            "ImageProblem",
            "localhost/orchard/trainer:dev",
        ),
        (
            job(active=1),
            [
                pod(
                    phase="Pending",
                    waiting={
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "s3" not found',
                    },
                )
            ],
            "Pending",
            "CreateContainerConfigError",
            'secret "s3" not found',
        ),
        (
            job(active=1),
            [
                pod(
                    phase="Pending",
                    waiting=None,
                    conditions=[
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/1 nodes are available: 1 Insufficient memory.",
                        }
                    ],
                )
            ],
            "Pending",
            "Unschedulable",
            "Insufficient memory",
        ),
        (
            job(succeeded=1, completionTime=T1, conditions=[cond("Complete")]),
            [],
            "Failed",
            "NoResult",
            "no trainer pod reported",
        ),
    ],
)
def test_single_run_outcomes(
    the_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    phase: str,
    reason: str,
    in_message: str,
) -> None:
    if pods and pods[0]["status"]["phase"] == "Pending" and "waiting" not in str(pods[0]):
        pods[0]["status"]["containerStatuses"] = []
    outcome = training_outcome(the_job, pods, deadline_seconds=3600)
    assert (outcome.phase, outcome.reason) == (phase, reason)
    assert in_message in outcome.message
    assert outcome.terminal == (phase in ("Succeeded", "Failed"))
    assert outcome.stop_job == (reason == "ImageProblem")


def test_success_carries_result_and_times() -> None:
    outcome = training_outcome(
        job(succeeded=1, completionTime=T1, conditions=[cond("Complete")]),
        [succeeded_pod(accuracy=0.9)],
    )
    assert outcome.result is not None and outcome.result.metrics == {"accuracy": 0.9}
    assert outcome.start_time == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert outcome.completion_time == datetime(2026, 11, 27, 10, 1, 30, tzinfo=UTC)


def test_retried_pod_newest_wins_but_success_sticks() -> None:
    first = failed_pod("oops")
    first["metadata"]["creationTimestamp"] = T0
    second = succeeded_pod()
    second["metadata"]["creationTimestamp"] = T1
    assert latest_by_index([pod_report(second), pod_report(first)])[0].phase == "Succeeded"
    third = failed_pod("later")
    third["metadata"]["creationTimestamp"] = "2026-11-27T10:05:00Z"
    reports = latest_by_index(pod_report(p) for p in [first, second, third])
    assert reports[0].phase == "Succeeded"


# --- searches --------------------------------------------------------------------


def test_best_trial_by_direction_with_ties_to_lowest_index() -> None:
    def r(**m: float) -> TrainerReport:
        return TrainerReport(artifact_uri="u", digest=DIGEST, metrics=m)

    results = {
        0: r(accuracy=0.9, rmse=3.0),
        1: r(accuracy=0.95, rmse=2.0),
        2: r(accuracy=0.95, rmse=1.0),
        3: r(rmse=0.5),
    }
    assert best_trial(results, "accuracy", "maximize") == 1
    assert best_trial(results, "rmse", "minimize") == 3
    assert best_trial(results, "r2") is None
    assert best_trial({}, "accuracy") is None


def test_search_registers_the_best_trial() -> None:
    pods = [succeeded_pod(i, accuracy=a) for i, a in enumerate([0.91, 0.97, 0.95, 0.93])]
    outcome = training_outcome(
        job(
            indexed=True,
            completions=4,
            succeeded=4,
            completionTime=T1,
            completedIndexes="0-3",
            conditions=[cond("Complete")],
        ),
        pods,
        SEARCH,
    )
    assert outcome.phase == "Succeeded"
    assert outcome.best_trial == 1
    assert outcome.result is not None and outcome.result.trial == 1
    assert [t.index for t in outcome.trials] == [0, 1, 2, 3]
    assert outcome.trials[1].params == {"max_depth": 1}
    assert outcome.trials[1].metrics == {"accuracy": 0.97}
    assert "best trial 1" in outcome.message and "4 of 4" in outcome.message


def test_search_with_failed_trials_still_registers_the_best_success() -> None:
    pods = [
        succeeded_pod(0, accuracy=0.91),
        failed_pod(error_message("GateFailed", "accuracy 0.4 < 0.9"), index=1),
        succeeded_pod(2, accuracy=0.93),
        failed_pod("", index=3, reason="OOMKilled", code=137),
    ]
    the_job = job(
        indexed=True,
        completions=4,
        succeeded=2,
        failed=2,
        completionTime=None,
        completedIndexes="0,2",
        failedIndexes="1,3",
        conditions=[cond("Failed", "FailedIndexes", "Job has failed indexes")],
    )
    outcome = training_outcome(the_job, pods, SEARCH)
    assert (outcome.phase, outcome.best_trial) == ("Succeeded", 2)
    assert "2 of 4 trials succeeded (2 failed)" in outcome.message
    assert [t.phase for t in outcome.trials] == ["Succeeded", "Failed", "Succeeded", "Failed"]


def test_search_where_every_trial_failed_says_why() -> None:
    pods = [
        failed_pod(error_message("GateFailed", f"accuracy 0.{i} < 0.9"), index=i) for i in range(4)
    ]
    the_job = job(
        indexed=True,
        completions=4,
        failed=4,
        failedIndexes="0-3",
        conditions=[cond("Failed", "FailedIndexes")],
    )
    outcome = training_outcome(the_job, pods, SEARCH)
    assert (outcome.phase, outcome.reason) == ("Failed", "GateFailed")
    assert outcome.message.startswith("trial 0: ")
    assert outcome.message.endswith("nothing was registered")
    assert outcome.result is None


def test_running_search_reports_progress() -> None:
    pods = [
        succeeded_pod(0, accuracy=0.9),
        pod("penguins-rf-1-aaaaa", index=1),
        pod("penguins-rf-2-bbbbb", index=2),
    ]
    outcome = training_outcome(
        job(indexed=True, completions=4, active=2, ready=2, succeeded=1), pods, SEARCH
    )
    assert outcome.phase == "Running"
    assert outcome.message == "1 of 4 trials done, 2 running"
    assert [t.phase for t in outcome.trials] == ["Succeeded", "Running", "Running"]


def test_trial_list_is_bounded_and_keeps_the_best() -> None:
    reports = {i: pod_report(succeeded_pod(i, accuracy=i / 100)) for i in range(60)}
    trials = trials_for_status(reports, SEARCH, limit=10)
    assert len(trials) == 10
    assert [t.index for t in trials] == list(range(50, 60))
    minimize = Search.model_validate(
        {
            **SEARCH.model_dump(by_alias=True),
            "objective": {"metric": "accuracy", "direction": "minimize"},
        }
    )
    assert [t.index for t in trials_for_status(reports, minimize, limit=3)] == [0, 1, 2]


# --- status ------------------------------------------------------------------------

SPEC = TrainingJobSpec.model_validate(
    {
        "model": "penguins",
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "RandomForestClassifier"},
        "artifacts": {"uri": "pvc://orchard-artifacts/"},
        "gate": {"metric": "f1_macro", "min": 0.5},
    }
)


def test_status_moves_through_phases_with_conditions() -> None:
    at0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    at1 = datetime(2026, 11, 27, 10, 2, tzinfo=UTC)
    running = training_outcome(job(active=1, ready=1), [pod()])
    s1 = training_status(TrainingJobStatus(), running, SPEC, generation=1, job_name="j", at=at0)
    assert s1.phase == "Running" and s1.observed_generation == 1 and s1.job_name == "j"
    ready = get_condition(s1.conditions, "Ready")
    assert ready is not None and ready.status == "False" and ready.reason == "Training"

    done = training_outcome(
        job(succeeded=1, completionTime=T1, conditions=[cond("Complete")]),
        [succeeded_pod(accuracy=0.97, f1_macro=0.95)],
    )
    s2 = training_status(s1, done, SPEC, generation=1, job_name="j", at=at1)
    assert s2.phase == "Succeeded" and s2.model_version is None
    assert get_condition(s2.conditions, "Ready").status == "False"  # type: ignore[union-attr]
    assert get_condition(s2.conditions, "Complete").status == "True"  # type: ignore[union-attr]
    assert s2.primary_metric is not None and s2.primary_metric.name == "f1_macro"
    assert s2.artifact is not None and s2.artifact.digest == DIGEST

    s3 = training_status(
        s2, done, SPEC, generation=1, job_name="j", model_version="penguins-v1", at=at1
    )
    ready3 = get_condition(s3.conditions, "Ready")
    assert ready3 is not None and ready3.status == "True" and ready3.reason == "Registered"
    assert ready3.last_transition_time == at1
    assert s3.model_version == "penguins-v1"
    assert "penguins-v1" in (s3.message or "")


def test_failed_status_names_the_reason() -> None:
    failed = training_outcome(
        job(failed=1, conditions=[cond("Failed", "BackoffLimitExceeded")]),
        [failed_pod(error_message("DataCheckFailed", "no column 'species'"))],
    )
    status = training_status(TrainingJobStatus(), failed, SPEC, generation=2, job_name="j")
    assert (status.phase, status.reason) == ("Failed", "DataCheckFailed")
    failed_cond = get_condition(status.conditions, "Failed")
    assert failed_cond is not None and failed_cond.status == "True"
    assert failed_cond.observed_generation == 2
    assert status.model_version is None


# --- the artifact store -------------------------------------------------------------

DEFAULT_STORE = Artifacts(uri="pvc://orchard-artifacts/")
OWN_STORE = Artifacts(uri="s3://models/team-a/", secret_name="orchard-s3")


@pytest.mark.parametrize(
    ("own", "default", "expected"),
    [
        (OWN_STORE, DEFAULT_STORE, OWN_STORE),  # the spec's own store wins
        (OWN_STORE, None, OWN_STORE),
        (None, DEFAULT_STORE, DEFAULT_STORE),  # the minimal spec: the operator's default
        (None, None, None),  # nowhere to write
    ],
)
def test_artifact_store_is_the_specs_else_the_operators_default(
    own: Artifacts | None, default: Artifacts | None, expected: Artifacts | None
) -> None:
    assert artifact_store(SPEC.model_copy(update={"artifacts": own}), default) == expected


def test_no_artifact_store_fails_with_a_condition_that_says_what_to_set() -> None:
    minimal = SPEC.model_copy(update={"artifacts": None})
    assert artifact_store(minimal, None) is None
    refused = Outcome("Failed", NO_ARTIFACT_STORE, NO_ARTIFACT_STORE_MESSAGE)
    status = training_status(TrainingJobStatus(), refused, minimal, generation=1, job_name="j")
    assert (status.phase, status.reason) == ("Failed", "NoArtifactStore")
    for type_, value in (("Ready", "False"), ("Failed", "True")):
        cond = get_condition(status.conditions, type_)
        assert cond is not None and (cond.status, cond.reason) == (value, "NoArtifactStore")
    assert "spec.artifacts.uri" in NO_ARTIFACT_STORE_MESSAGE
    assert "ORCHARD_DEFAULT_ARTIFACTS" in NO_ARTIFACT_STORE_MESSAGE
    assert status.message == NO_ARTIFACT_STORE_MESSAGE


@pytest.mark.parametrize(
    ("spec_extra", "metrics", "expected"),
    [
        ({}, {"accuracy": 0.9, "f1_macro": 0.8}, ("f1_macro", 0.8)),  # the gate's
        ({"gate": None}, {"log_loss": 0.3, "accuracy": 0.9}, ("accuracy", 0.9)),
        ({"gate": None}, {"log_loss": 0.3}, ("log_loss", 0.3)),
        ({"gate": None}, {}, None),
    ],
)
def test_primary_metric(
    spec_extra: dict[str, Any], metrics: dict[str, float], expected: tuple[str, float] | None
) -> None:
    spec = SPEC.model_copy(update=spec_extra)
    got = primary_metric(spec, metrics)
    assert (None if got is None else (got.name, got.value)) == expected


# --- registration ----------------------------------------------------------------


def mv(name: str, model: str, version: int, uid: str = "other") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"orchard.dev/trainingjob-uid": uid}},
        "spec": {"model": model, "version": version},
    }


def test_next_version_and_registered_version() -> None:
    existing = [
        mv("penguins-v1", "penguins", 1),
        mv("penguins-v7", "penguins", 7, uid="me"),
        mv("iris-v9", "iris", 9),
    ]
    assert next_version(existing, "penguins") == 8
    assert next_version(existing, "wine") == 1
    assert registered_version(existing, "me", "orchard.dev/trainingjob-uid") == "penguins-v7"
    assert registered_version(existing, "nobody", "orchard.dev/trainingjob-uid") is None


def test_a_succeeded_pod_decides_before_the_job_says_complete() -> None:
    # The Job controller takes a few seconds to count a finished pod; the pod's own
    # exit 0 and result already decide a run of one completion.
    the_job = job(active=1, ready=0)
    done = succeeded_pod(accuracy=0.9)
    done["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = T1
    outcome = training_outcome(the_job, [done])
    assert (outcome.phase, outcome.reason) == ("Succeeded", "Trained")
    assert outcome.completion_time == datetime(2026, 11, 27, 10, 1, 30, tzinfo=UTC)
    # ...but not a failed pod: retries (backoffLimit) are the Job's to decide
    failed = training_outcome(job(active=0), [failed_pod(error_message("GateFailed", "low"))])
    assert failed.phase != "Failed"


def test_a_search_decides_early_only_when_every_trial_succeeded() -> None:
    pods = [succeeded_pod(i, accuracy=0.9 + i / 100) for i in range(3)]
    the_job = job(indexed=True, completions=4, active=1, succeeded=3)
    running = training_outcome(the_job, pods, SEARCH)
    assert (running.phase, running.message) == ("Running", "3 of 4 trials done, 0 running")
    pods.append(succeeded_pod(3, accuracy=0.91))
    outcome = training_outcome(the_job, pods, SEARCH)
    assert (outcome.phase, outcome.best_trial) == ("Succeeded", 2)


@pytest.mark.parametrize(
    ("status", "may"),
    [
        (None, False),  # just made, or no Job controller runs
        ({}, False),
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, False),
        ({"startTime": "2026-12-01T12:00:00Z"}, True),
        ({"active": 1}, True),
        ({"ready": 0, "terminating": 1}, True),
        ({"failed": 2}, True),
        ({"succeeded": 1, "completionTime": "2026-12-01T12:01:00Z"}, True),
    ],
)
def test_a_job_not_started_has_no_pods_to_read(status: dict[str, Any] | None, may: bool) -> None:
    job: dict[str, Any] = {"metadata": {"name": "iris-train", "uid": "u1"}}
    if status is not None:
        job["status"] = status
    assert pods_may_exist(job) is may
