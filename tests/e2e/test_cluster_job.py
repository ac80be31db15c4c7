"""A Job runs a command in a locally built image to completion; its logs are read."""

from __future__ import annotations

from typing import cast

import pytest
from lightkube import Client
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

pytestmark = pytest.mark.e2e


def job(name: str, image: str) -> Job:
    return cast(
        Job,
        Job.from_dict(
            {
                "metadata": {"name": name},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "main",
                                    "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": [
                                        "python3",
                                        "-c",
                                        "import os; print('answer', 6 * 7, 'uid', os.getuid())",
                                    ],
                                }
                            ],
                        }
                    },
                },
            }
        ),
    )


def test_job_completes_and_logs_are_read(
    node_client: Client, node_namespace: str, testbox_image: str
) -> None:
    node_client.create(job("answer", testbox_image), namespace=node_namespace)
    node_client.wait(
        Job,
        "answer",
        namespace=node_namespace,
        for_conditions=["Complete"],
        raise_for_conditions=["Failed"],
    )
    pods = list(node_client.list(Pod, namespace=node_namespace, labels={"job-name": "answer"}))
    assert len(pods) == 1
    assert pods[0].status is not None and pods[0].status.phase == "Succeeded"
    assert pods[0].metadata is not None and pods[0].metadata.name is not None
    logs = "".join(node_client.log(pods[0].metadata.name, namespace=node_namespace))
    # The image runs as its own unprivileged user, from the local base image.
    assert logs.strip() == "answer 42 uid 10001"
