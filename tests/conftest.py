"""Fixtures of every tier: a kubeconfig for a real cluster (api and e2e), and a loopback
HTTP server of the test dataset (unit); `kubectl` and `build_images` for the tests that
use the cluster.

When KUBECONFIG names a cluster other than the local one (kind, a lab cluster), the
tests use it and start nothing. Otherwise they use .cluster/kubeconfig and start the
level they need with tests/cluster/harness, which is left running for the next run
(`make cluster-down` stops it).
"""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from tests.cluster.harness.common import BRIDGE

REPO = Path(__file__).resolve().parents[1]
# Both run as modules from the checkout: `python -m tests.cluster.harness`, `-m images.build`.
HARNESS = "tests.cluster.harness"
BUILD_IMAGES = "images.build"
LOCAL_CLUSTER = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster"))
LOCAL_KUBECONFIG = LOCAL_CLUSTER / "kubeconfig"
LOCAL_AUDIT_LOG = LOCAL_CLUSTER / "logs" / "audit.log"  # the harness's AUDIT_LOG
TESTBOX_IMAGE = "localhost/orchard/testbox:dev"


def external_kubeconfig() -> Path | None:
    """The kubeconfig named by KUBECONFIG when it is not the local harness's own."""
    named = os.environ.get("KUBECONFIG")
    if not named:
        return None
    path = Path(named).resolve()
    return None if path == LOCAL_KUBECONFIG.resolve() else path


def _harness(*args: str, module: str = HARNESS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO
    )


def build_images(*names: str) -> None:
    """Build images/<name> for each name and load it into the local node (an image that is
    up to date is not rebuilt). Another cluster gets its images by other means (`make
    kind-up`), so nothing is built for it. A failure fails the test."""
    if external_kubeconfig() is not None:
        return
    proc = _harness(*names, module=BUILD_IMAGES)
    if proc.returncode != 0:
        pytest.fail(f"could not build {', '.join(names)}:\n{proc.stdout}{proc.stderr}")


def kubectl(
    *args: str,
    kubeconfig: Path | str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """kubectl on `kubeconfig`, else on the cluster KUBECONFIG names. Unless check=False,
    a failure fails the test with kubectl's output."""
    where = ["--kubeconfig", str(kubeconfig)] if kubeconfig is not None else []
    proc = subprocess.run(
        ["kubectl", *where, *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def install_crds(kubeconfig: Path | str | None = None) -> None:
    """Orchard's CRDs from crds/, applied server-side and waited for until established
    and served: just after Established, a request can still be answered 503 "storage is
    (re)initializing", which failed the first api test of a fresh API server."""
    crds = str(REPO / "crds")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", crds, kubeconfig=kubeconfig)
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", crds, kubeconfig=kubeconfig
    )
    kinds = "trainingjobs.orchard.dev,modelversions.orchard.dev,modeldeployments.orchard.dev"
    for _ in range(120):
        if kubectl("get", kinds, "-A", kubeconfig=kubeconfig, check=False).returncode == 0:
            return
        time.sleep(0.5)
    kubectl("get", kinds, "-A", kubeconfig=kubeconfig)  # fails the test with kubectl's words


def _ensure_level(level: str) -> Path:
    external = external_kubeconfig()
    if external is not None:
        return external
    pre = _harness("preflight") if level == "node" else None
    if pre is not None and pre.returncode != 0:
        _cannot_run(pre.stdout.strip())
    proc = _harness("up", "--level", level)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        if "preflight:" in output:
            _cannot_run(output.splitlines()[-1])
        pytest.fail(f"could not start the {level} level of the local cluster:\n{output}")
    return LOCAL_KUBECONFIG


def _cannot_run(reason: str) -> None:
    """Without root or a kernel feature the cluster cannot run: fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# tests/e2e/test_cluster_*.py check the node level itself: pods run, resolve, bind storage.
CLUSTER_CHECKS = "test_cluster_"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster's own checks run first (a stable sort keeps every other order)."""
    items.sort(key=lambda item: not item.path.name.startswith(CLUSTER_CHECKS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """An e2e failure carries what the cluster looked like then (nodes, pods that do not
    run, warning events); when one of the cluster's own checks fails, nothing of Orchard
    can pass, so the session stops rather than wait out every other test's timeout."""
    report = yield
    if report.failed and item.get_closest_marker("e2e"):
        report.sections.append(("the cluster at this failure", cluster_state()))
        if item.path.name.startswith(CLUSTER_CHECKS):
            item.session.shouldstop = f"the cluster itself fails ({item.name}); see its state above"
    return report


def cluster_state() -> str:
    """Nodes, pods not Running or Succeeded, and the last warning events, from kubectl."""
    kubeconfig = external_kubeconfig()
    if kubeconfig is None:
        # The local API server's address is on the harness's bridge: with the bridge gone,
        # a request to it would leave the machine.
        if not Path("/sys/class/net", BRIDGE).exists():
            return f"the local cluster is not up (no bridge {BRIDGE})"
        kubeconfig = LOCAL_KUBECONFIG
    parts = []
    for args in (
        ("get", "nodes", "-o", "wide"),
        (
            "get",
            "pods",
            "-A",
            "-o",
            "wide",
            "--field-selector=status.phase!=Running,status.phase!=Succeeded",
        ),
        ("get", "events", "-A", "--field-selector=type=Warning", "--sort-by=.lastTimestamp"),
    ):
        try:
            proc = kubectl(*args, kubeconfig=kubeconfig, check=False, timeout=20)
            out = (proc.stdout + proc.stderr).strip().splitlines()
        except subprocess.TimeoutExpired:
            out = ["(no answer in 20 s)"]
        parts.append(f"$ kubectl {' '.join(args)}\n" + "\n".join(out[:1] + out[1:][-15:]))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def kubeconfig_api() -> Path:
    """A kubeconfig for a cluster with at least the API server (etcd + kube-apiserver)."""
    return _ensure_level("api")


@pytest.fixture(scope="session")
def kubeconfig_node() -> Path:
    """A kubeconfig for a cluster that runs pods (the node level, or any real cluster)."""
    return _ensure_level("node")


@pytest.fixture(scope="session")
def testbox_image(kubeconfig_node: Path) -> str:
    """localhost/orchard/testbox:dev, built and loaded into the local node if needed."""
    build_images("testbox")
    return TESTBOX_IMAGE


def _client(kubeconfig: Path) -> Iterator[Client]:
    """A client closed at the end of the session: its pooled connections to the API
    server would otherwise be left to the garbage collector (a ResourceWarning)."""
    config = KubeConfig.from_file(kubeconfig)
    with Client(config, field_manager="orchard-tests", trust_env=False) as client:
        yield client


@pytest.fixture(scope="session")
def api_client(kubeconfig_api: Path) -> Iterator[Client]:
    """A lightkube Client as the cluster admin, on the api level."""
    yield from _client(kubeconfig_api)


@pytest.fixture(scope="session")
def node_client(kubeconfig_node: Path) -> Iterator[Client]:
    """A lightkube Client as the cluster admin, on the node level."""
    yield from _client(kubeconfig_node)


def _namespace(client: Client) -> Iterator[str]:
    name = f"orchard-test-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=name, labels={"orchard.dev/test": "true"})))
    # The api level runs no controller-manager, whose service-account controller makes
    # each namespace's "default" ServiceAccount; pods (written by the tests, as a Job
    # controller would) are refused without it. Where the controller runs, it may win.
    try:
        client.create(ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)))
    except ApiError as err:
        if err.status.code != 409:
            raise
    try:
        yield name
    finally:
        client.delete(Namespace, name)


@pytest.fixture
def api_namespace(api_client: Client) -> Iterator[str]:
    """A fresh namespace on the api level, deleted after the test."""
    yield from _namespace(api_client)


@pytest.fixture
def node_namespace(node_client: Client) -> Iterator[str]:
    """A fresh namespace on the node level, deleted after the test."""
    yield from _namespace(node_client)


def stand_in_crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A schema-less CRD standing in for another project's kind (Gateway API's) where
    that project is not installed; labelled so that a test removes only its own."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"orchard.dev/test": "stand-in"},
            # a *.k8s.io group must say whether its API was approved
            "annotations": {"api-approved.kubernetes.io": "unapproved, a test stand-in"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


PENGUINS = REPO / "tests" / "data" / "penguins.csv"


def serve_penguins(root: Path, context: ssl.SSLContext | None = None) -> Iterator[str]:
    """A loopback HTTP(S) server of penguins.csv under `root`; yields its base URL.
    Like a presigned URL's host, it ignores any query string."""
    (root / "www").mkdir()
    (root / "www" / "penguins.csv").write_bytes(PENGUINS.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root / "www"), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server of the test dataset (see `serve_penguins`)."""
    yield from serve_penguins(tmp_path)
