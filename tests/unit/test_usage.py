"""The in-memory index of which ModelDeployments use which ModelVersions
(`handlers.usage`), fed by the deployments' watch events."""

from __future__ import annotations

from typing import Any

from orchard.handlers.usage import Usage, Uses, uses_of


def md(
    spec_version: str | None = None,
    stable: str | None = None,
    canary: str | None = None,
    track: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"modelVersion": spec_version} if spec_version else {}
    if track:
        spec["track"] = {"model": track}
    status = {k: v for k, v in {"stableVersion": stable, "canaryVersion": canary}.items() if v}
    meta = {"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}
    return {"metadata": meta, "spec": spec, "status": status}


def test_what_a_deployment_uses() -> None:
    assert uses_of(md("v2", stable="v1", canary="v2")) == Uses(frozenset({"v1", "v2"}))
    assert uses_of(md(stable="v1", track="iris")) == Uses(frozenset({"v1"}), "iris")
    assert uses_of(md("v1", track="iris", deleting=True)) == Uses()
    assert uses_of(None) == Uses()


def test_each_event_says_which_versions_gained_or_lost_a_user() -> None:
    usage = Usage()
    assert usage.see("ml", "web", md("v1")) == {"v1"}
    assert usage.see("ml", "web", md("v1")) == set()  # the same again: nothing changed
    assert usage.see("ml", "batch", md("v1", stable="v1")) == {"v1"}
    assert usage.users("ml", "v1") == ["batch", "web"]
    # a rollout: web moves to v2 while v1 still serves, then lets v1 go
    assert usage.see("ml", "web", md("v2", stable="v1", canary="v2")) == {"v2"}
    assert usage.see("ml", "web", md("v2", stable="v2")) == {"v1"}
    assert usage.users("ml", "v1") == ["batch"] and usage.users("ml", "v2") == ["web"]
    assert usage.users("other", "v1") == []  # namespaces apart
    assert usage.see("ml", "batch", md("v1", stable="v1", deleting=True)) == {"v1"}
    assert usage.users("ml", "v1") == []
    assert usage.see("ml", "web", None) == {"v2"}  # gone
    assert usage.users("ml", "v2") == []
    assert usage.see("ml", "web", None) == set()


def test_trackers_of_a_model() -> None:
    usage = Usage()
    usage.see("ml", "a", md(track="iris"))
    usage.see("ml", "b", md(track="iris", stable="iris-v3"))
    usage.see("ml", "c", md(track="penguins"))
    assert usage.trackers("ml", "iris") == ["a", "b"]
    assert usage.see("ml", "a", md(track="penguins")) == set()  # no version changed hands
    assert usage.trackers("ml", "iris") == ["b"] and usage.trackers("ml", "penguins") == ["a", "c"]
    usage.see("ml", "b", None)
    assert usage.trackers("ml", "iris") == []
