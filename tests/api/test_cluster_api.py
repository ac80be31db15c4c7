"""The api level serves real API semantics: a CRD with schema validation and a status
subresource, created, listed, watched and patched against a real kube-apiserver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import PatchType

pytestmark = pytest.mark.api

GROUP = "harness.orchard.dev"
Widget = create_namespaced_resource(GROUP, "v1", "Widget", "widgets")


def widget_crd() -> CustomResourceDefinition:
    """A test-only CRD: an integer spec with bounds and a status subresource."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
            },
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        },
    }
    return cast(
        CustomResourceDefinition,
        CustomResourceDefinition.from_dict(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"widgets.{GROUP}"},
                "spec": {
                    "group": GROUP,
                    "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {"openAPIV3Schema": schema},
                            "subresources": {"status": {}},
                        }
                    ],
                },
            }
        ),
    )


@pytest.fixture(scope="module")
def widget_kind(api_client: Client) -> Iterator[None]:
    name = f"widgets.{GROUP}"
    api_client.apply(widget_crd(), force=True)
    api_client.wait(CustomResourceDefinition, name, for_conditions=["Established"])
    yield
    api_client.delete(CustomResourceDefinition, name)


def as_dict(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], obj.to_dict())


def widget(name: str, size: int) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def test_crd_object_lifecycle(api_client: Client, api_namespace: str, widget_kind: None) -> None:
    ns = api_namespace
    name = f"w-{uuid.uuid4().hex[:6]}"
    created = api_client.create(Widget.from_dict(widget(name, 3)), namespace=ns)
    assert as_dict(created)["spec"] == {"size": 3}

    listed = api_client.list(Widget, namespace=ns)
    names = [as_dict(item)["metadata"]["name"] for item in listed]
    assert names == [name]
    resource_version = listed.resourceVersion

    # A status patch goes through the status subresource and leaves spec alone ...
    api_client.patch(
        Widget.Status,
        name,
        {"status": {"phase": "Ready"}, "spec": {"size": 9}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    current = api_client.get(Widget, name, namespace=ns)
    assert as_dict(current)["status"] == {"phase": "Ready"}
    assert as_dict(current)["spec"] == {"size": 3}

    # ... and a watch from the list's resourceVersion sees exactly that change.
    events = api_client.watch(
        Widget, namespace=ns, resource_version=resource_version, server_timeout=10
    )
    kind, obj = next(iter(events))
    assert str(kind) == "MODIFIED"
    assert as_dict(obj)["metadata"]["name"] == name
    assert as_dict(obj)["status"] == {"phase": "Ready"}

    # The main resource ignores status; spec changes bump the generation.
    assert current.metadata is not None and current.metadata.generation is not None
    generation = current.metadata.generation
    api_client.patch(
        Widget,
        name,
        {"spec": {"size": 4}, "status": {"phase": "Gone"}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    after = api_client.get(Widget, name, namespace=ns)
    assert as_dict(after)["spec"] == {"size": 4}
    assert as_dict(after)["status"] == {"phase": "Ready"}
    assert after.metadata is not None
    assert after.metadata.generation == generation + 1


def test_crd_schema_rejects_invalid_objects(
    api_client: Client, api_namespace: str, widget_kind: None
) -> None:
    with pytest.raises(ApiError) as err:
        api_client.create(Widget.from_dict(widget("too-big", 11)), namespace=api_namespace)
    assert err.value.status.code == 422
    assert "spec.size" in (err.value.status.message or "")


def test_rbac_is_enforced(api_client: Client) -> None:
    """The admin may list pods; a user with no bindings may not (RBAC, not AlwaysAllow)."""
    from lightkube.resources.authorization_v1 import SubjectAccessReview

    def allowed(user: str, groups: list[str]) -> bool:
        review = cast(
            SubjectAccessReview,
            SubjectAccessReview.from_dict(
                {
                    "spec": {
                        "user": user,
                        "groups": groups,
                        "resourceAttributes": {"verb": "list", "resource": "pods"},
                    }
                }
            ),
        )
        status = api_client.create(review).status
        assert status is not None
        return bool(status.allowed)

    assert allowed("orchard-admin", ["system:masters"])
    assert not allowed("nobody", ["system:authenticated"])
