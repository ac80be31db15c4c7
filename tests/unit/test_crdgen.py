"""The generated CRDs: structural, described, validated, and in step with crds/."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from orchard.api import KINDS
from orchard.api.crdgen import (
    SchemaError,
    add_arguments,
    crd,
    drift,
    model_schema,
    rendered,
    run,
)

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "const", "title"}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path (defaults and CEL rules are values, not nodes)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def schema_of(kind: Any) -> dict[str, Any]:
    out: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_schema_is_structural(kind: Any) -> None:
    for path, node in walk(schema_of(kind)):
        assert not FORBIDDEN_KEYS & set(node), f"{path}: {sorted(FORBIDDEN_KEYS & set(node))}"
        free = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or free or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), path
        if node.get("type") == "object" and "properties" not in node and path != ".metadata":
            assert free or "additionalProperties" in node, f"{path}: object without fields"
        for key in ("exclusiveMinimum", "exclusiveMaximum", "nullable"):
            assert isinstance(node.get(key, True), bool), f"{path}: {key} must be a boolean"
        if "enum" in node:
            assert node.get("type") in {"string", "integer", "number", "boolean"}, path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_field_is_described(kind: Any) -> None:
    root = schema_of(kind)
    for part in ("spec", "status"):
        for path, node in walk(root["properties"][part], part):
            if not path.endswith(("[]", "{}")):
                assert node.get("description"), f"{kind.__name__} {path} has no description"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_names_subresource_and_columns(kind: Any) -> None:
    obj = crd(kind)
    info = kind.RESOURCE
    assert obj["metadata"]["name"] == f"{info.plural}.orchard.dev"
    names = obj["spec"]["names"]
    assert names["categories"] == ["orchard"]
    assert names["shortNames"] == info.short_names
    version = obj["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"
    status = schema_of(kind)["properties"]["status"]["properties"]
    assert {"phase", "observedGeneration", "conditions"} <= set(status)
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def rules(kind: Any) -> dict[str, list[str]]:
    """Dotted path -> the CEL rules declared there."""
    return {
        path: [r["rule"] for r in node["x-kubernetes-validations"]]
        for path, node in walk(schema_of(kind))
        if "x-kubernetes-validations" in node
    }


def test_cel_rules_reach_the_schema() -> None:
    tj, mv, md = (rules(k) for k in KINDS)
    assert tj[".spec.search"] == ["self.parallelism <= self.maxTrials"]
    assert tj[".spec.gate"] == ["has(self.min) || has(self.max)"]
    assert len(tj[".spec.dataset"]) == 2
    assert mv[".spec"] == ["self == oldSelf"]
    assert "isSorted()" in md[".spec.canary.steps"][0]
    assert md[".spec.traffic"] == ["self.mode != 'gatewayAPI' || has(self.httpRoute)"]


def test_defaults_are_kept_including_default_factories() -> None:
    md = schema_of(KINDS[2])["properties"]["spec"]["properties"]
    assert md["replicas"]["default"] == 2
    assert md["canary"]["properties"]["steps"]["default"] == [
        {"weight": 25, "pause": "15s"},
        {"weight": 50, "pause": "15s"},
    ]
    assert md["traffic"]["default"] == {"mode": "replicas"}
    tj = schema_of(KINDS[0])["properties"]["spec"]["properties"]
    assert tj["evaluation"]["default"] == {"testSize": 0.2, "cvFolds": 0, "randomState": 42}
    assert "default" not in tj["gate"]  # None is no default


def test_conversions_of_json_schema_constructs() -> None:
    class Inner(BaseModel):
        """Inner doc."""

        x: int = Field(description="An x.")

    class Sample(BaseModel):
        """Sample doc."""

        fixed: Literal["only"] = Field(description="A const.")
        maybe: Inner | None = Field(default=None, description="Optional inner.")
        ratio: float = Field(gt=0, lt=1, description="Open interval.")
        free: dict[str, Any] = Field(description="Free-form.")
        counts: dict[str, int] = Field(description="A map.")
        anything: list[Any] = Field(description="A list of anything.")

    props = model_schema(Sample)["properties"]
    assert props["fixed"] == {"type": "string", "description": "A const.", "enum": ["only"]}
    assert props["maybe"]["nullable"] is True and props["maybe"]["description"] == "Optional inner."
    assert props["maybe"]["properties"]["x"] == {"type": "integer", "description": "An x."}
    assert props["ratio"]["minimum"] == 0 and props["ratio"]["exclusiveMinimum"] is True
    assert props["ratio"]["maximum"] == 1 and props["ratio"]["exclusiveMaximum"] is True
    assert props["free"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "additionalProperties" not in props["free"]
    assert props["counts"]["additionalProperties"] == {"type": "integer"}
    assert props["anything"]["items"] == {
        "x-kubernetes-preserve-unknown-fields": True,
        "nullable": True,
    }


def test_a_union_is_refused() -> None:
    class Bad(BaseModel):
        value: int | str

    with pytest.raises(SchemaError, match="union"):
        model_schema(Bad)


def test_committed_crds_are_in_step() -> None:
    assert drift(rendered(), CRDS) == ""
    assert drift(rendered(), ROOT / "manifests" / "crds") == ""  # the kustomize copies
    for path in CRDS.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] == "CustomResourceDefinition"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_check_passes_on_committed_files_and_fails_on_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_args("--check", "--output", str(CRDS))) == 0
    assert run(_args("--output", str(tmp_path))) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(rendered())
    assert run(_args("--check", "--output", str(tmp_path))) == 0
    capsys.readouterr()
    edited = tmp_path / "trainingjobs.orchard.dev.yaml"
    edited.write_text(edited.read_text().replace("shortNames:\n    - tj", "shortNames:\n    - tjx"))
    assert run(_args("--check", "--output", str(tmp_path))) == 1
    out = capsys.readouterr().out
    assert "-    - tjx" in out and "+    - tj" in out
