"""GitOps through a real Argo CD, in the local cluster, with no person editing anything
but git.

Argo CD's core install (the release's own core-install.yaml: the application controller,
the repo-server and redis) runs from images/argocd, the argocd binary built from its Go
module, with manifests/argocd/argocd-cm.yaml merged into its argocd-cm by kustomize, as a
user would. A git daemon in the cluster serves a repository the test commits to; an
Application syncs its `ml/` directory into the test namespace, where the operator runs.

  A. three TrainingJobs (wave 0) and a ModelDeployment serving iris-v1 (wave 1): the
     Application ends Synced and Healthy, its ModelDeployment Healthy, and the operator's
     children (Deployments, Services, Jobs) are not the Application's, so never pruned;
  B. the deployment moves to iris-v2 (its quiet canary judged on replayed rows): the
     Application goes Progressing, then Healthy, iris-v2 stable;
  C. iris-v3 with replay off: the quiet canary pauses and Argo CD shows Suspended; the
     abort action, run through Argo CD, rolls it back: Degraded, with the reason;
  D. git goes back to iris-v2: Healthy and Synced again.
At the end no diff comes from the operator (Synced), the ModelDeployment's generation
counts only git's changes, and the audit log shows the operator never wrote a spec.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import build_images, install_crds, kubectl
from in_cluster import InClusterOperator
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim
from test_rollout import wait_for

from tests.cluster.harness.common import build_dir

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster")) / "figures"
ARGOCD_NS = "argocd"
IMAGE = "localhost/orchard/argocd:dev"
CLAIM = "orchard-artifacts"
APP = create_namespaced_resource("argoproj.io", "v1alpha1", "Application", "applications")
MD = create_namespaced_resource("orchard.dev", "v1alpha1", "ModelDeployment", "modeldeployments")
GIT_SERVER = "gitserver"
REPO_URL = f"git://{GIT_SERVER}.{ARGOCD_NS}.svc.cluster.local/models.git"
WAVE = "argocd.argoproj.io/sync-wave"


def kustomization() -> dict[str, Any]:
    """How a user would install Argo CD's core with Orchard's customizations."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": ARGOCD_NS,
        "resources": ["core-install.yaml"],
        "images": [
            {"name": "quay.io/argoproj/argocd", "newName": IMAGE.split(":")[0], "newTag": "dev"},
            {"name": "public.ecr.aws/docker/library/redis", "newName": IMAGE.split(":")[0],
             "newTag": "dev"},
        ],
        "patches": [{"path": "argocd-cm.yaml"}],
    }  # fmt: skip


def for_this_cluster(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered install, made to run here: images only from the node (no registry),
    redis started by name (the image has no entrypoint script), no GPG in the repo-server
    (no gpg binary), no ApplicationSet controller (not used), and a short reconciliation
    period so a commit is seen within seconds."""
    out = []
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Deployment" and name == "argocd-applicationset-controller":
            continue
        if doc["kind"] == "ConfigMap" and name == "argocd-cm":
            doc.setdefault("data", {})["timeout.reconciliation"] = "10s"
        pod = (doc.get("spec") or {}).get("template", {}).get("spec")
        for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            container["imagePullPolicy"] = "IfNotPresent"
            if container["name"] == "redis":
                container["command"] = ["redis-server"]
            if container["name"] == "argocd-repo-server":
                container.setdefault("env", []).append(
                    {"name": "ARGOCD_GPG_ENABLED", "value": "false"}
                )
        out.append(doc)
    return out


def git_server(claim: str) -> list[dict[str, Any]]:
    """`git daemon` serving the claim's repositories read-only on 9418."""
    labels = {"app.kubernetes.io/name": GIT_SERVER}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": GIT_SERVER, "namespace": ARGOCD_NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "securityContext": {"runAsUser": 999, "runAsGroup": 999},
                      "containers": [{
                          "name": "git", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                          "command": ["git", "-c", "safe.directory=*", "daemon", "--reuseaddr",
                                      "--export-all", "--base-path=/srv/git", "--port=9418",
                                      "/srv/git"],
                          "ports": [{"containerPort": 9418, "name": "git"}],
                          "readinessProbe": {"tcpSocket": {"port": 9418}, "periodSeconds": 2},
                          "volumeMounts": [{"name": "repos", "mountPath": "/srv/git",
                                            "readOnly": True}]}],
                      "volumes": [{"name": "repos",
                                   "persistentVolumeClaim": {"claimName": claim}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": GIT_SERVER, "namespace": ARGOCD_NS},
         "spec": {"selector": labels, "ports": [{"name": "git", "port": 9418}]}},
    ]  # fmt: skip


def claim_directory(client: Client, name: str, namespace: str) -> Path:
    """A claim of the default (host-path) class, bound; its directory on this machine."""
    client.create(
        PersistentVolumeClaim.from_dict(
            {"metadata": {"name": name},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "64Mi"}}}}
        ),
        namespace=namespace,
    )  # fmt: skip

    def bound() -> str | None:
        pvc = client.get(PersistentVolumeClaim, name, namespace=namespace)
        ok = pvc.status is not None and pvc.status.phase == "Bound" and pvc.spec is not None
        return pvc.spec.volumeName if ok and pvc.spec is not None else None

    volume = client.get(PersistentVolume, wait_for(f"the claim {name} to bind", bound, 60))
    assert volume.spec is not None and volume.spec.hostPath is not None
    root = Path(volume.spec.hostPath.path)
    root.chmod(0o777)  # pods run as other users; host paths ignore fsGroup
    return root


class ArgoCD:
    """Argo CD's core in the `argocd` namespace, and the CLI in core mode beside it."""

    def __init__(self, kubeconfig: Path, work: Path) -> None:
        self.kubeconfig, self.work = kubeconfig, work
        self.cli = build_dir("argocd") / "argocd"
        # Core mode finds Argo CD in the current context's namespace.
        self.cli_kubeconfig = work / "argocd.kubeconfig"
        shutil.copy(kubeconfig, self.cli_kubeconfig)
        kubectl("config", "set-context", "--current", f"--namespace={ARGOCD_NS}",
                kubeconfig=self.cli_kubeconfig)  # fmt: skip

    def install(self, client: Client) -> Path:
        """Install and wait until every component is ready; return the git repository's
        directory on this machine (a bare repository the git daemon serves)."""
        release = build_dir("argocd") / "core-install.yaml"
        assert release.exists(), f"{release} is missing: run `make argocd`"
        kdir = self.work / "install"
        kdir.mkdir()
        shutil.copy(release, kdir / "core-install.yaml")
        shutil.copy(REPO / "manifests" / "argocd" / "argocd-cm.yaml", kdir / "argocd-cm.yaml")
        (kdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization()))
        rendered = kubectl("kustomize", str(kdir), timeout=120).stdout
        docs = for_this_cluster([d for d in yaml.safe_load_all(rendered) if d])
        kubectl("create", "namespace", ARGOCD_NS, kubeconfig=self.kubeconfig)
        repos = claim_directory(client, "git-repos", ARGOCD_NS)
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main",
                        str(repos / "models.git")], check=True)  # fmt: skip
        install = yaml.safe_dump_all([*docs, *git_server("git-repos")])
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=install,
                kubeconfig=self.kubeconfig, timeout=300)  # fmt: skip
        for workload in (
            "deploy/argocd-redis",
            "deploy/argocd-repo-server",
            "statefulset/argocd-application-controller",
            f"deploy/{GIT_SERVER}",
        ):
            kubectl("-n", ARGOCD_NS, "rollout", "status", workload, "--timeout=300s",
                    kubeconfig=self.kubeconfig, timeout=320)  # fmt: skip
        project = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
                   "metadata": {"name": "default", "namespace": ARGOCD_NS},
                   "spec": {"sourceRepos": ["*"],
                            "destinations": [{"server": "*", "namespace": "*"}],
                            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}}  # fmt: skip
        kubectl("apply", "-f", "-", input=json.dumps(project), kubeconfig=self.kubeconfig)
        return repos / "models.git"

    def uninstall(self) -> None:
        kubectl("-n", ARGOCD_NS, "delete", "application", "--all", "--wait=false",
                kubeconfig=self.kubeconfig, check=False)  # fmt: skip
        kubectl("delete", "namespace", ARGOCD_NS, "--wait=false",
                kubeconfig=self.kubeconfig, check=False)  # fmt: skip

    def logs(self) -> str:
        out = []
        for workload in ("statefulset/argocd-application-controller",
                         "deploy/argocd-repo-server"):  # fmt: skip
            proc = kubectl("-n", ARGOCD_NS, "logs", workload, "--tail=60",
                           kubeconfig=self.kubeconfig, check=False)  # fmt: skip
            out.append(f"--- {workload}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def cli_json(self, *args: str) -> dict[str, Any]:
        """An argocd command's JSON output, in core mode (see `run_action`)."""
        proc = subprocess.run(
            [str(self.cli), *args, "--core", "-o", "json"], capture_output=True, text=True,
            timeout=120, env={**os.environ, "KUBECONFIG": str(self.cli_kubeconfig),
                              "HOME": str(self.work)},
        )  # fmt: skip
        assert proc.returncode == 0, f"argocd {' '.join(args)} failed:\n{proc.stderr}"
        return dict(json.loads(proc.stdout))

    def run_action(self, action: str, kind: str, name: str, namespace: str) -> str:
        """`argocd app actions run` in core mode: the CLI runs Argo CD's API server in
        process, on this kubeconfig, as an admin would from a terminal."""
        proc = subprocess.run(
            [str(self.cli), "app", "actions", "run", f"{ARGOCD_NS}/iris", action, "--kind", kind,
             "--resource-name", name, "--namespace", namespace, "--core"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "KUBECONFIG": str(self.cli_kubeconfig),
                 "HOME": str(self.work)},
        )  # fmt: skip
        assert proc.returncode == 0, f"argocd app actions run failed:\n{proc.stdout}{proc.stderr}"
        return proc.stdout


class Models:
    """A working copy of the repository Argo CD syncs: each commit is pushed at once."""

    def __init__(self, bare: Path, work: Path) -> None:
        self.bare, self.dir = bare, work / "models"
        self.git("init", "--quiet", "--initial-branch=main", str(self.dir), cwd=work)
        (self.dir / "ml").mkdir()

    def git(self, *args: str, cwd: Path | None = None) -> None:
        subprocess.run(
            ["git", "-c", "user.name=Orchard e2e", "-c", "user.email=e2e@orchard.invalid", *args],
            cwd=cwd or self.dir, check=True, capture_output=True,
        )  # fmt: skip

    def commit(self, message: str, files: dict[str, dict[str, Any]]) -> None:
        for name, doc in files.items():
            (self.dir / "ml" / name).write_text(yaml.safe_dump(doc))
        self.git("add", "ml")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", str(self.bare), "main")
        for path in [self.bare, *self.bare.rglob("*")]:  # the git daemon runs as uid 999
            path.chmod(0o755 if path.is_dir() else 0o644)


def training_job(name: str, seed: int = 7) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "annotations": {WAVE: "0"}},
        "spec": {"model": "iris", "dataset": {"builtin": "iris"},
                 "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
                 "evaluation": {"testSize": 0.25, "randomState": seed},
                 "artifacts": {"uri": f"pvc://{CLAIM}/models"}, "activeDeadlineSeconds": 600},
    }  # fmt: skip


def deployment(version: str, replay: bool) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "annotations": {WAVE: "1"}},
        "spec": {"modelVersion": version, "replicas": 1,
                 "canary": {"steps": [{"weight": 50, "pause": "5s"}],
                            "analysis": {"interval": "5s", "minRequests": 20,
                                         "replay": replay}}},
    }  # fmt: skip


@pytest.fixture
def operator(kubeconfig_node: Path, node_namespace: str) -> Iterator[InClusterOperator]:
    if os.environ.get("ORCHARD_E2E_REUSE_IMAGES") != "1":
        build_images("server", "trainer", "operator", "argocd")
    install_crds(kubeconfig_node)
    op = InClusterOperator(kubeconfig_node, node_namespace, FIGURES / "logs")
    op.install()
    try:
        yield op
    finally:
        op.uninstall()
    misconduct = op.misconduct()
    assert not misconduct, "refused by its role, or writing a spec:\n" + "\n".join(misconduct)


@pytest.fixture
def argocd(kubeconfig_node: Path, tmp_path: Path) -> Iterator[ArgoCD]:
    if not (build_dir("argocd") / ".complete").exists():
        pytest.fail("no argocd build: run `make argocd`")
    cd = ArgoCD(kubeconfig_node, tmp_path)
    try:
        yield cd
    finally:
        cd.uninstall()


def test_argocd_syncs_rolls_out_aborts_and_never_drifts(
    kubeconfig_node: Path, node_client: Client, node_namespace: str, tmp_path: Path,
    operator: InClusterOperator, argocd: ArgoCD,
) -> None:  # fmt: skip
    ns, client = node_namespace, node_client
    claim_directory(client, CLAIM, ns)
    models = Models(argocd.install(client), tmp_path)
    application = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": "iris", "namespace": ARGOCD_NS},
        "spec": {"project": "default",
                 "source": {"repoURL": REPO_URL, "targetRevision": "main", "path": "ml"},
                 "destination": {"server": "https://kubernetes.default.svc", "namespace": ns},
                 "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}},
    }  # fmt: skip
    seen: list[tuple[float, str, str]] = []  # (time, sync, health) as the Application moved

    def app() -> dict[str, Any]:
        status = dict(client.get(APP, "iris", namespace=ARGOCD_NS).get("status") or {})
        entry = (time.monotonic(), (status.get("sync") or {}).get("status", ""),
                 (status.get("health") or {}).get("status", ""))  # fmt: skip
        if not seen or seen[-1][1:] != entry[1:]:
            seen.append(entry)
        return status

    def md() -> dict[str, Any]:
        return dict(client.get(MD, "iris", namespace=ns).get("status") or {})

    def at(sync: str | None, health: str) -> dict[str, Any] | None:
        status = app()
        _, now_sync, now_health = seen[-1]
        return status if (sync is None or now_sync == sync) and now_health == health else None

    def reaches(sync: str | None, health: str, what: str, timeout: float) -> dict[str, Any]:
        try:
            return dict(wait_for(what, lambda: at(sync, health), timeout, every=1.0))
        except AssertionError as err:
            raise AssertionError(f"{err}; the Application went {seen[-8:]}; md {md()}\n"
                                 f"{argocd.logs()}") from None  # fmt: skip

    def refresh() -> None:  # what a webhook from the git host would do
        kubectl("-n", ARGOCD_NS, "annotate", "--overwrite", "application", "iris",
                "argocd.argoproj.io/refresh=normal", kubeconfig=kubeconfig_node)  # fmt: skip

    # A. trained and served
    # the same rows and seed: three equal models, so each version passes the evaluation
    # gate against the one before (scored on the same rows, none drops)
    jobs = {f"tj-{n}.yaml": training_job(f"iris-{n}") for n in "abc"}
    models.commit("iris: three trainings, v1 served",
                  {**jobs, "md.yaml": deployment("iris-v1", replay=True)})  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps(application), kubeconfig=kubeconfig_node)
    start = time.monotonic()
    status = reaches("Synced", "Healthy", "the first sync to be Healthy", 600)
    figures = {"first_sync_healthy_s": round(time.monotonic() - start, 1)}
    assert md()["stableVersion"] == "iris-v1"
    tracked = {(r["kind"], r["name"]): r for r in status["resources"]}
    assert set(tracked) == {("TrainingJob", f"iris-{n}") for n in "abc"} | {
        ("ModelDeployment", "iris")
    }, tracked  # the operator's children are not the app's
    assert {r.get("status") for r in tracked.values()} == {"Synced"}, tracked
    served = kubectl("-n", ns, "get", "deploy,svc", "-l", "orchard.dev/modeldeployment=iris",
                     "-o", "name", kubeconfig=kubeconfig_node).stdout.split()  # fmt: skip
    assert served, "the serving Deployment and Services are there, not pruned"

    # B. a new version, rolled out (its quiet canary judged on replayed rows)
    models.commit("iris: serve v2", {"md.yaml": deployment("iris-v2", replay=True)})
    refresh()
    start = time.monotonic()
    reaches(None, "Progressing", "the rollout of iris-v2 to show Progressing", 120)
    reaches("Synced", "Healthy", "the rollout of iris-v2 to end Healthy", 600)
    figures["v2_rollout_healthy_s"] = round(time.monotonic() - start, 1)
    assert (md()["stableVersion"], md().get("canaryVersion")) == ("iris-v2", None)

    # C. a quiet canary pauses (Suspended); the abort action run through Argo CD
    models.commit("iris: try v3", {"md.yaml": deployment("iris-v3", replay=False)})
    refresh()
    reaches(None, "Suspended", "the quiet canary of iris-v3 to show Suspended", 300)
    out = argocd.run_action("abort", "ModelDeployment", "iris", ns)
    reaches(None, "Degraded", "the aborted rollout to show Degraded", 120)
    assert md()["phase"] == "RolledBack" and md()["stableVersion"] == "iris-v2", (md(), out)
    # Argo CD 3 keeps each resource's health out of the Application; its API has it
    shown = argocd.cli_json("app", "get", f"{ARGOCD_NS}/iris")["status"]["resources"]
    health = next(r["health"] for r in shown if r["kind"] == "ModelDeployment")
    assert health["status"] == "Degraded", health
    assert health["message"].startswith("RolledBack: rolled back iris-v3 to iris-v2"), health

    # D. git goes back to what serves
    models.commit("iris: back to v2", {"md.yaml": deployment("iris-v2", replay=True)})
    refresh()
    reaches("Synced", "Healthy", "iris-v2 to be Healthy again", 300)
    generation = client.get(MD, "iris", namespace=ns).metadata.generation  # type: ignore[union-attr]
    assert generation == 4, generation  # one per commit that changed its spec, none else
    figures["application_states"] = [f"{sync}/{health}" for _, sync, health in seen]
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "argocd.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nargocd figures:", json.dumps(figures, indent=2))
