"""The operator's skeleton: settings, command line, RBAC generation, import rules."""

from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import kopf
import pytest

from orchard.handlers import main

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "orchard"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(argv)


def test_settings_use_orchard_names_and_bounded_watches() -> None:
    settings = kopf.OperatorSettings()
    main.configure(settings, main.Options())
    assert settings.persistence.finalizer == "orchard.dev/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "orchard.dev"
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.diffbase_storage.prefix == "orchard.dev"
    watching = settings.watching
    assert watching.server_timeout and watching.client_timeout
    assert watching.server_timeout < watching.client_timeout
    assert 0 < watching.inactivity_timeout <= 120
    assert settings.posting.level == logging.WARNING  # decisions are posted by Orchard
    assert settings.peering.standalone


def test_command_line() -> None:
    options = main.options_from(parse())
    assert options.all_namespaces and options.namespaces == ()
    assert options.liveness == "http://0.0.0.0:8080/healthz" and options.metrics_port == 9090
    options = main.options_from(parse("-n", "ml", "--namespace", "team-*", "--verbose"))
    assert not options.all_namespaces and options.namespaces == ("ml", "team-*")
    assert options.verbose
    assert main.options_from(parse("--all-namespaces")).all_namespaces
    with pytest.raises(SystemExit):
        parse("--all-namespaces", "-n", "ml")


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("message", "level"),
    [
        (
            "Request attempt #1/9 failed; will retry: GET https://api/apis/batch/v1 "
            "-> APITooManyRequestsError('storage is (re)initializing')",
            logging.WARNING,
        ),
        (
            "Request attempt #2/9 failed; TCP closed; will re-authenticate: GET https://api/",
            logging.WARNING,
        ),
        (
            "Request attempt #9/9 failed; escalating: GET https://api/ -> ClientConnectionError()",
            logging.ERROR,
        ),
        ("Handler 'sync' failed with an exception. Will retry.", logging.ERROR),
        (
            "Handler 'guard_deletion' failed temporarily: ModelVersion iris-v1 is used by",
            logging.WARNING,
        ),
        ("Handler 'start' failed temporarily but will exceed 3 retries: x", logging.ERROR),
    ],
)
def test_retried_requests_are_warnings_the_last_failure_an_error(message: str, level: int) -> None:
    record = _record("kopf._cogs.clients.api", logging.ERROR, message)
    assert main.RetriesAreWarnings().filter(record)
    assert (record.levelno, record.levelname) == (level, logging.getLevelName(level))


def test_retried_requests_of_other_loggers_are_left_alone() -> None:
    record = _record("orchard.kube", logging.ERROR, "Request attempt #1/9 failed; will retry: x")
    assert main.RetriesAreWarnings().filter(record) and record.levelno == logging.ERROR


@pytest.mark.parametrize(
    ("name", "level", "message", "shown"),
    [
        ("kopf.objects", logging.INFO, "Handler 'follow_rollout' succeeded.", False),
        ("kopf.objects", logging.INFO, "Creation is processed: 1 succeeded; 0 failed.", False),
        ("kopf.objects", logging.ERROR, "Handler 'sync' failed with an exception.", True),
        ("kopf.objects", logging.INFO, "Handler 'start' is invoked.", True),
        ("orchard.handlers", logging.INFO, "Handler 'x' succeeded.", True),  # not Kopf's
    ],
)
def test_only_kopfs_successes_are_left_to_verbose(
    name: str, level: int, message: str, shown: bool
) -> None:
    assert main.SuccessesAreDebug().filter(_record(name, level, message)) == shown


def test_logging_filters_the_stream_and_the_event_poster() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        main.configure_logging(verbose=False)
        for name in ("", "kopf.objects"):
            handlers = logging.getLogger(name).handlers
            assert handlers and all(
                any(isinstance(f, main.RetriesAreWarnings) for f in h.filters) for h in handlers
            )
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for handler in logging.getLogger("kopf.objects").handlers:
            handler.filters = [
                f
                for f in handler.filters
                if not isinstance(f, main.RetriesAreWarnings | main.SuccessesAreDebug)
            ]


def test_a_default_artifact_store_that_is_no_store_stops_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else every TrainingJob without spec.artifacts would fail on it, one by one."""
    monkeypatch.setenv("ORCHARD_DEFAULT_ARTIFACTS", "/var/models")
    monkeypatch.setenv("ORCHARD_POLICY_FILE", "/nonexistent/policy.yaml")  # the default policy
    memo = kopf.Memo(options=main.Options(metrics_port=0))
    with pytest.raises(kopf.PermanentError, match="ORCHARD_DEFAULT_ARTIFACTS"):
        main.startup(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger("t"))


def _module(name: str, rules: list[dict[str, list[str]]]) -> ModuleType:
    module = ModuleType(name)
    module.RBAC_RULES = rules  # type: ignore[attr-defined]
    return module


def test_rbac_rules_merge_verbs_per_resource() -> None:
    a = _module("a", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create"]}])
    b = _module(
        "b",
        [
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["get"]},
        ],
    )
    assert main.rbac_rules([a, b, ModuleType("no_rules")]) == [
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]},
    ]


def test_kopf_needs_are_in_the_role() -> None:
    rules = main.rbac_rules([main])
    verbs = {
        (g, r): set(rule["verbs"])
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert {"list", "watch"} <= verbs[("apiextensions.k8s.io", "customresourcedefinitions")]
    assert {"list", "watch"} <= verbs[("", "namespaces")]
    assert "create" in verbs[("", "events")]
    for plural in ("trainingjobs", "modelversions", "modeldeployments"):
        assert {"list", "watch", "patch"} <= verbs[("orchard.dev", plural)]
        assert "patch" in verbs[("orchard.dev", f"{plural}/status")]
    # Least privilege: no wildcards, nothing on secrets from the skeleton itself.
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in rules)


def test_committed_role_is_in_step(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "manifests" / "rbac" / "role.yaml"
    assert main.run(parse("--check-rbac", str(path))) == 0


def test_role_drift_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "role.yaml"
    assert main.run(parse("--write-rbac", str(path))) == 0
    assert main.run(parse("--check-rbac", str(path))) == 0
    path.write_text(path.read_text().replace("- watch\n", "", 1))
    capsys.readouterr()
    assert main.run(parse("--check-rbac", str(path))) == 1
    assert "+  - watch" in capsys.readouterr().out


def test_only_handlers_import_kopf() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "handlers" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "kopf" or n.startswith("kopf.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_crds_command_does_not_need_kopf() -> None:
    # The api package (and so `orchard crds`) stays importable without the operator extra.
    code = "import sys; sys.modules['kopf'] = None; import orchard.api.crdgen, orchard.kube"
    subprocess.run([sys.executable, "-c", code], check=True)


OWNER = {
    "apiVersion": "orchard.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1"},
}


def test_event_body() -> None:
    from datetime import UTC, datetime

    from orchard import kube

    body = kube.event_body(
        OWNER, "Registered", "x" * 2000, type_="Warning", now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert body["involvedObject"]["uid"] == "u-1" and body["type"] == "Warning"
    assert body["metadata"] == {"generateName": "iris.", "namespace": "ml"}
    assert len(body["message"]) == 1024 and body["firstTimestamp"] == "2026-01-01T00:00:00Z"
    assert kube.resource("orchard.dev/v1alpha1", "TrainingJob").__name__ == "TrainingJob"
    assert kube.resource("batch/v1", "Job").__name__ == "Job"


def test_in_cluster_login_uses_the_service_address_not_dns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("orchard-system")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(main, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = main.login(settings=kopf.OperatorSettings())
    assert info is not None
    assert info.server == "https://10.96.0.1:443" and info.token == "tok"
    assert info.default_namespace == "orchard-system" and info.ca_path == str(tmp_path / "ca.crt")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = main.login(settings=kopf.OperatorSettings())
    assert info is not None and info.server == "https://[fd00::1]:443"


def test_outside_a_pod_login_reads_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: ml}}]\n"
    )
    monkeypatch.setattr(main, "SERVICE_ACCOUNT", tmp_path / "absent")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(config))
    info = main.login(settings=kopf.OperatorSettings(), logger=logging.getLogger("test"))
    assert info is not None and info.server == "https://127.0.0.1:6443" and info.token == "abc"
