"""The cluster CA, every component's certificate and kubeconfig, and the admin's own
requests to the API server."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import (
    API_PORT,
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    NODE_NAME,
    PKI,
    run,
    say,
    write_if_changed,
)


def ensure_pki() -> None:
    """A cluster CA and every certificate the components need (openssl, 1 year). A PKI
    made before a component was added gets just that component's certificate."""
    PKI.mkdir(parents=True, exist_ok=True)
    fresh = not (PKI / ".complete").exists()
    ossl = ["openssl"]
    if fresh:
        say("pki: generating CA, serving and client certificates")
        run([*ossl, "genrsa", "-out", str(PKI / "ca.key"), "2048"])
        run(
            [
                *ossl,
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-key",
                str(PKI / "ca.key"),
                "-sha256",
                "-days",
                "3650",
                "-subj",
                "/CN=orchard-local-ca",
                "-out",
                str(PKI / "ca.crt"),
            ]
        )
        run([*ossl, "genrsa", "-out", str(PKI / "sa.key"), "2048"])
        run([*ossl, "rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub")])
    api_sans = [
        f"IP:{NODE_IP}",
        "IP:127.0.0.1",
        f"IP:{KUBERNETES_SERVICE_IP}",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
    certs: list[tuple[str, str, list[str], str]] = [
        ("apiserver", "/CN=kube-apiserver", api_sans, "serverAuth"),
        ("kubelet", f"/CN={NODE_NAME}", [f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"], "serverAuth"),
        ("admin", "/O=system:masters/CN=orchard-admin", [], "clientAuth"),
        (
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            [],
            "clientAuth",
        ),
        ("controller-manager", "/CN=system:kube-controller-manager", [], "clientAuth"),
        ("scheduler", "/CN=system:kube-scheduler", [], "clientAuth"),
        ("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", [], "clientAuth"),
        ("kube-proxy", "/CN=system:kube-proxy", [], "clientAuth"),
        # CoreDNS reads Services, EndpointSlices and Namespaces as this user, bound to the
        # system:coredns ClusterRole (components.BOOTSTRAP), as kubeadm binds its pods.
        ("coredns", "/CN=system:coredns", [], "clientAuth"),
    ]
    missing = [c for c in certs if fresh or not (PKI / f"{c[0]}.crt").exists()]
    if missing and not fresh:
        say(f"pki: adding certificates for {', '.join(c[0] for c in missing)}")
    for name, subj, sans, usage in missing:
        key, csr, crt = (PKI / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        run([*ossl, "genrsa", "-out", str(key), "2048"])
        run([*ossl, "req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr)])
        ext = PKI / f"{name}.ext"
        lines = [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        run(
            [
                *ossl,
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(PKI / "ca.crt"),
                "-CAkey",
                str(PKI / "ca.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-sha256",
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ]
        )
        csr.unlink()
        ext.unlink()
    if not missing:
        return
    for key in PKI.glob("*.key"):
        key.chmod(0o600)
    (PKI / ".complete").touch()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, user: str, cert: str) -> None:
    """A kubeconfig with embedded certificates, so it works when copied elsewhere."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "orchard-local",
                "cluster": {
                    "server": f"https://{NODE_IP}:{API_PORT}",
                    "certificate-authority-data": b64(PKI / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(PKI / f"{cert}.crt"),
                    "client-key-data": b64(PKI / f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "orchard-local", "context": {"cluster": "orchard-local", "user": user}}
        ],
        "current-context": "orchard-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(path, yaml.safe_dump(doc, sort_keys=False))


def api_request(method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
    """One request to the API server as the admin; returns the decoded JSON."""
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"https://{NODE_IP}:{API_PORT}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
        raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def https_ok(url: str) -> bool:
    """True when a component's local health endpoint answers 200 (self-signed TLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(
        url, context=ctx if url.startswith("https") else None, timeout=2
    ) as resp:
        return bool(resp.status == 200)
