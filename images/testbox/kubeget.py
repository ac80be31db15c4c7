"""GET an API path as the pod's ServiceAccount and print the HTTP status and body.

Usage: python3 kubeget.py /api/v1/namespaces/NS/pods
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def main() -> int:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ["KUBERNETES_SERVICE_PORT"]
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    req = urllib.request.Request(
        f"https://{host}:{port}{sys.argv[1]}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    print(f"status={status}")
    print(body.decode(errors="replace")[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
