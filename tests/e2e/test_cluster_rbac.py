"""A pod's ServiceAccount token is accepted by the API server, and RBAC decides: listing
pods is allowed where a RoleBinding grants it and refused with 403 where none does."""

from __future__ import annotations

from typing import cast

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Pod, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

pytestmark = pytest.mark.e2e


def grants(namespace: str) -> list[object]:
    return [
        ServiceAccount.from_dict({"metadata": {"name": "reader"}}),
        Role.from_dict(
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            }
        ),
        RoleBinding.from_dict(
            {
                "metadata": {"name": "reader-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            }
        ),
    ]


def probe(image: str) -> Pod:
    script = (
        "python3 /opt/testbox/kubeget.py /api/v1/namespaces/$NS/pods; "
        "python3 /opt/testbox/kubeget.py /api/v1/namespaces/kube-system/pods"
    )
    return cast(
        Pod,
        Pod.from_dict(
            {
                "metadata": {"name": "probe"},
                "spec": {
                    "serviceAccountName": "reader",
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script],
                            "env": [
                                {
                                    "name": "NS",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                }
                            ],
                        }
                    ],
                },
            }
        ),
    )


def test_service_account_token_and_rbac(
    node_client: Client, node_namespace: str, testbox_image: str
) -> None:
    ns = node_namespace
    for obj in grants(ns):
        node_client.create(obj, namespace=ns)  # type: ignore[call-overload]
    node_client.create(probe(testbox_image), namespace=ns)
    phase = None
    for _, event in node_client.watch(
        Pod, namespace=ns, fields={"metadata.name": "probe"}, server_timeout=120
    ):
        phase = event.status.phase if event.status else None
        if phase in ("Succeeded", "Failed"):
            break
    logs = "".join(node_client.log("probe", namespace=ns))
    assert phase == "Succeeded", logs
    allowed, denied = logs.split("status=")[1:3]
    # Allowed in its own namespace: a PodList that includes the probe pod itself.
    assert allowed.startswith("200")
    assert '"kind":"PodList"' in allowed and '"name":"probe"' in allowed
    # Refused elsewhere, by RBAC and for this exact ServiceAccount.
    assert denied.startswith("403")
    assert f"system:serviceaccount:{ns}:reader" in denied
