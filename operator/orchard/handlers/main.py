"""`orchard operator`: run the Kopf operator, with Orchard's settings in one startup handler.

Also writes (or checks) the ClusterRole the handlers need: every handler module declares
the verbs it uses in a module-level `RBAC_RULES`, and `--write-rbac` merges them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import prometheus_client
import yaml

from .. import kube
from ..api import FINALIZER, GROUP
from ..builders.common import TrainerSettings
from . import canary_metrics, controller_modules, loops, policy, watched

log = logging.getLogger(__name__)

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_METRICS_PORT = 9090
ROLE_NAME = "orchard"

# What Kopf itself needs, whatever the handlers do: discover CRDs, follow namespaces
# (with --all-namespaces or patterns), post events, and keep its state in annotations
# and finalizers of Orchard's own objects.
RBAC_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},  # Kopf only posts
    {
        "apiGroups": [GROUP],
        "resources": ["trainingjobs", "modelversions", "modeldeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": [GROUP],
        "resources": ["trainingjobs/status", "modelversions/status", "modeldeployments/status"],
        "verbs": ["get", "patch"],
    },
]

OPERATOR_INFO = prometheus_client.Info("orchard_operator", "The running Orchard operator.")
OPERATOR_START = prometheus_client.Gauge(
    "orchard_operator_start_time_seconds", "When the operator started, in Unix seconds."
)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    liveness: str = DEFAULT_LIVENESS
    metrics_port: int = DEFAULT_METRICS_PORT
    verbose: bool = False


def configure(settings: kopf.OperatorSettings, options: Options) -> None:
    """Every Kopf setting Orchard changes, in one place."""
    # Orchard's own finalizer and annotation prefix, not Kopf's defaults. The finalizer is
    # put only on a ModelVersion a ModelDeployment uses (its deletion guard): no handler
    # is a Kopf timer or daemon, and every other delete handler is gone (cleanup is by
    # ownerReferences, or on the DELETED event), so nothing else waits for the operator.
    settings.persistence.finalizer = FINALIZER
    # Annotations only: the CRDs' structural schemas would prune a status.kopf field.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key=watched.DIFF_BASE_KEY
    )
    # Watches can go silent: bound every stream and reconnect when nothing arrives.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 70
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Events a person reads in `kubectl describe`, named as Orchard's. The controllers post
    # their decisions themselves (`kube.post_event`, with reasons); of the log, only
    # warnings and errors are posted. At info, Kopf posted two "Logging" events for every
    # object made ("Handler 'start' succeeded.", "Creation is processed: ..."): noise in
    # `describe`, and two requests per object to the API server.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "orchard-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "local")
    settings.posting.event_name_prefix = "orchard-"
    # One replica (Deployment strategy Recreate): no peering objects needed.
    settings.peering.standalone = True
    settings.peering.clusterwide = options.all_namespaces
    # Plain errors are retried, but not in a tight loop.
    settings.execution.default_backoff = 30
    settings.execution.max_workers = 8


class RetriesAreWarnings(logging.Filter):
    """Kopf logs every retried API request as an error, even one the retry then fixes (the
    API server's "storage is (re)initializing" after a CRD is installed, a connection
    cut at shutdown). Those are warnings; the last attempt's failure stays an error."""

    RETRIED = ("; will retry: ", "; will re-authenticate: ")
    # A handler's kopf.TemporaryError ("not yet": a version in use, a start retried with
    # backoff) is the handler's own, bounded, decision; the status says why.
    TEMPORARY = " failed temporarily: "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf"):
            message = record.getMessage()
            retried = message.startswith("Request attempt ") and any(
                r in message for r in self.RETRIED
            )
            if retried or self.TEMPORARY in message:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class SuccessesAreDebug(logging.Filter):
    """Kopf logs at info every handler that succeeded and every cause it processed: a
    line per watch event and handler (several per object and second under load). They
    are shown with --verbose; failures, and what the handlers log, always are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("kopf"):
            return True
        message = record.getMessage()
        return not (
            (message.startswith("Handler '") and message.endswith("' succeeded."))
            or " is processed: " in message
        )


# The HTTP clients' line per request (the API server's, and the /metrics scrapes'): debug.
REQUEST_LOGGERS = ("httpx", "httpx2")


def configure_logging(verbose: bool) -> None:
    """Kopf's JSON logs, with retried requests logged (and posted as events) as warnings.
    A line per HTTP request, and per handler that succeeded, only with --verbose."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_refkey="object")
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    filters: list[logging.Filter] = [RetriesAreWarnings()]
    if not verbose:
        filters.append(SuccessesAreDebug())
    for name in ("", "kopf.objects"):  # the stream handler, and the handler posting events
        for handler in logging.getLogger(name).handlers:
            for f in filters:
                handler.addFilter(f)


@kopf.on.startup()
def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Apply the settings, read the admin's policy and the trainer's settings, and start
    the metrics endpoint."""
    options: Options = memo.get("options", Options())
    configure(settings, options)
    loops.keep_root_context()
    try:
        in_force = policy.current()
    except ValueError as exc:  # a typo must not loosen anything: do not start
        raise kopf.PermanentError(f"{policy.policy_path()}: {exc}") from exc
    logger.info("policy from %s: %s", policy.policy_path(), in_force.model_dump_json(by_alias=True))
    try:
        trainer = TrainerSettings.from_env()
    except ValueError as exc:  # else every TrainingJob would fail on it, one by one
        raise kopf.PermanentError(str(exc)) from exc
    default = trainer.default_artifacts
    logger.info("default artifact store: %s", default.uri if default else "none")
    if options.metrics_port and "metrics_server" not in memo:
        server, _thread = prometheus_client.start_http_server(options.metrics_port)
        memo["metrics_server"] = server
    OPERATOR_INFO.info(
        {
            "version": _version(),
            "namespaces": "*" if options.all_namespaces else ",".join(options.namespaces),
        }
    )
    OPERATOR_START.set(time.time())
    logger.info(
        "Orchard operator started: controllers=%s metrics=:%s liveness=%s",
        [m.__name__.rsplit(".", 1)[-1] for m in controller_modules()],
        options.metrics_port,
        options.liveness,
    )


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the API server at the address in the environment, not by its DNS name.

    Kopf's own in-cluster login names https://kubernetes.default.svc, which needs cluster
    DNS; KUBERNETES_SERVICE_HOST works on every cluster. Elsewhere: the kubeconfig.
    """
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    token = SERVICE_ACCOUNT / "token"
    if host and token.exists():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        namespace = SERVICE_ACCOUNT / "namespace"
        ca = SERVICE_ACCOUNT / "ca.crt"
        return kopf.ConnectionInfo(
            server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
            ca_path=str(ca) if ca.exists() else None,
            token=token.read_text().strip() or None,
            default_namespace=namespace.read_text().strip() if namespace.exists() else None,
            trust_env=False,
        )
    return kopf.login_with_kubeconfig(settings=settings, **kwargs)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Stop the per-object loops and the metrics endpoint, and close the API and scrape
    clients."""
    await loops.stop_all()
    await canary_metrics.close()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()
    await kube.close()
    logger.info("Orchard operator stopped.")


@kopf.on.probe(id="version")
def probe_version(**_: Any) -> str:
    """Shown in the liveness endpoint's answer."""
    return _version()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orchard")
    except PackageNotFoundError:
        return "unknown"


# --- RBAC ---------------------------------------------------------------------------


def rbac_rules(modules: Iterable[ModuleType]) -> list[dict[str, Any]]:
    """The rules of every module merged: one rule per API group and resource, verbs united."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for module in modules:
        for rule in getattr(module, "RBAC_RULES", []):
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    verbs.setdefault((group, res), set()).update(rule["verbs"])
    # Resources of one group with the same verbs share a rule, to keep the role short.
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, res), vs in sorted(verbs.items()):
        grouped.setdefault((group, tuple(sorted(vs))), []).append(res)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(vs)}
        for (group, vs), resources in sorted(grouped.items())
    ]


def cluster_role(modules: Iterable[ModuleType]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": ROLE_NAME,
            "labels": {"app.kubernetes.io/name": "orchard", "app.kubernetes.io/part-of": "orchard"},
        },
        "rules": rbac_rules(modules),
    }


def render_role() -> str:
    modules = [sys.modules[__name__], *controller_modules()]
    header = (
        "# Generated by `orchard operator --write-rbac` from the RBAC_RULES of the handler\n"
        "# modules (operator/orchard/handlers). Do not edit.\n"
    )
    return header + yaml.safe_dump(cluster_role(modules), sort_keys=False, width=1000)


def write_or_check_role(path: Path, check: bool) -> int:
    want = render_role()
    if check:
        have = path.read_text() if path.exists() else ""
        if have != want:
            sys.stdout.writelines(
                difflib.unified_diff(
                    have.splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile=f"{path} (generated)",
                )
            )
            sys.stderr.write(f"{path} is out of step with the handlers' RBAC_RULES\n")
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(want)
    print(path)
    return 0


# --- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; glob patterns allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--liveness",
        default=DEFAULT_LIVENESS,
        metavar="URL",
        help=f"liveness endpoint to serve (default: {DEFAULT_LIVENESS})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help=f"Prometheus metrics port, 0 for none (default: {DEFAULT_METRICS_PORT})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    rbac = parser.add_mutually_exclusive_group()
    rbac.add_argument(
        "--write-rbac",
        type=Path,
        metavar="FILE",
        help="write the ClusterRole the handlers need to FILE and exit",
    )
    rbac.add_argument(
        "--check-rbac",
        type=Path,
        metavar="FILE",
        help="exit 1, printing the difference, if FILE is out of step with the handlers",
    )


def options_from(args: argparse.Namespace) -> Options:
    namespaces: Sequence[str] = args.namespace
    return Options(
        namespaces=tuple(namespaces),
        all_namespaces=not namespaces,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        verbose=args.verbose,
    )


def run(args: argparse.Namespace) -> int:
    if args.write_rbac or args.check_rbac:
        return write_or_check_role(args.write_rbac or args.check_rbac, bool(args.check_rbac))
    options = options_from(args)
    configure_logging(options.verbose)
    controller_modules()  # importing them registers their handlers
    kopf.run(
        standalone=True,
        clusterwide=options.all_namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=options.liveness or None,
        memo=kopf.Memo(options=options),
    )
    return 0
