"""A PVC of the default StorageClass binds, and a file one pod wrote is read by another."""

from __future__ import annotations

from typing import cast

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Pod

pytestmark = pytest.mark.e2e


def claim() -> PersistentVolumeClaim:
    return cast(
        PersistentVolumeClaim,
        PersistentVolumeClaim.from_dict(
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "16Mi"}},
                },
            }
        ),
    )


def pod(name: str, image: str, script: str) -> Pod:
    return cast(
        Pod,
        Pod.from_dict(
            {
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    # host-path volumes are created root-owned; write as root inside the pod
                    "securityContext": {"runAsUser": 0},
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                },
            }
        ),
    )


def run_to_completion(client: Client, namespace: str, obj: Pod) -> str:
    assert obj.metadata is not None and obj.metadata.name is not None
    name = obj.metadata.name
    client.create(obj, namespace=namespace)
    phase = None
    for _, event in client.watch(
        Pod, namespace=namespace, fields={"metadata.name": name}, server_timeout=120
    ):
        phase = event.status.phase if event.status else None
        if phase in ("Succeeded", "Failed"):
            break
    logs = "".join(client.log(name, namespace=namespace))
    assert phase == "Succeeded", f"pod {name} {phase}: {logs}"
    return logs


def test_pvc_binds_and_data_outlives_the_pod(
    node_client: Client, node_namespace: str, testbox_image: str
) -> None:
    ns = node_namespace
    node_client.create(claim(), namespace=ns)
    for _, event in node_client.watch(
        PersistentVolumeClaim, namespace=ns, fields={"metadata.name": "data"}, server_timeout=60
    ):
        if event.status and event.status.phase == "Bound":
            break
    bound = node_client.get(PersistentVolumeClaim, "data", namespace=ns)
    assert bound.status is not None and bound.status.phase == "Bound"
    assert bound.spec is not None and bound.spec.storageClassName == "standard"
    assert bound.spec.volumeName is not None
    volume = node_client.get(PersistentVolume, bound.spec.volumeName)
    assert volume.spec is not None and volume.spec.hostPath is not None

    token = f"written-by-writer-{ns}"
    run_to_completion(
        node_client, ns, pod("writer", testbox_image, f"echo {token} > /data/hello.txt")
    )
    logs = run_to_completion(node_client, ns, pod("reader", testbox_image, "cat /data/hello.txt"))
    assert logs.strip() == token
