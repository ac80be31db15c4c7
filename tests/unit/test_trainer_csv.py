"""The trainer on a file: categorical columns and missing values, CSV and Parquet, from
file://, pvc:// and http:// (a real HTTP server on loopback)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from conftest import serve_penguins

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import sha256_file, verify_artifact
from orchard.trainer.data import infer_format
from orchard.trainer.errors import DatasetUnavailable, InvalidSpec
from orchard.trainer.train import train

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"


def make_job(uri: str, **spec: Any) -> TrainingJob:
    body = {
        "model": "penguins",
        "dataset": {"uri": uri, "target": "species"},
        "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 20}},
        "artifacts": {"uri": "file:///unused"},
        **spec,
    }
    return TrainingJob.model_validate({"metadata": {"name": "penguins-rf"}, "spec": body})


RAW_ROWS = pd.DataFrame(
    {
        "island": ["Biscoe", None, "Atlantis"],  # missing, and never seen in training
        "bill_length_mm": [47.0, None, 38.0],
        "bill_depth_mm": [15.0, 18.5, 18.0],
        "flipper_length_mm": [217, 195, 190],
        "body_mass_g": [5000.0, 3700.0, None],
        "sex": ["male", "female", None],
        "year": [2008, 2009, 2007],
    }
)


def test_categorical_columns_and_missing_values_by_default(tmp_path: Path) -> None:
    result = train(make_job(f"file://{PENGUINS}"), f"file://{tmp_path}/out")
    assert result.metrics["accuracy"] > 0.9
    assert result.dataset["digest"] == sha256_file(PENGUINS)
    meta = verify_artifact(tmp_path / "out", result.digest)
    assert {c.name: c.type for c in meta.inputs} == {
        "island": "string",
        "bill_length_mm": "number",
        "bill_depth_mm": "number",
        "flipper_length_mm": "integer",
        "body_mass_g": "number",
        "sex": "string",
        "year": "integer",
    }
    island = meta.feature_stats["island"]
    assert island.missing == 1 and island.frequencies is not None
    assert set(island.frequencies) == {"Biscoe", "Dream", "Torgersen"}
    bill = meta.feature_stats["bill_length_mm"]
    assert bill.missing == 7 and bill.quantiles is not None and len(bill.quantiles) == 5
    assert meta.output.classes == ["Adelie", "Chinstrap", "Gentoo"]

    model = joblib.load(tmp_path / "out" / "model.joblib")
    predicted = model.predict(RAW_ROWS)
    assert list(predicted[:2]) == ["Gentoo", "Adelie"]
    assert model.predict_proba(RAW_ROWS).shape == (3, 3)


@pytest.mark.parametrize(
    "preprocessing",
    [
        {"categorical": {"encode": "ordinal"}},
        {"categorical": {"impute": "constant"}, "numeric": {"scale": "minmax", "impute": "mean"}},
        {"categorical": {"impute": "none"}, "numeric": {"scale": "robust"}},
    ],
)
def test_preprocessing_variants(tmp_path: Path, preprocessing: dict[str, Any]) -> None:
    job = make_job(f"file://{PENGUINS}", preprocessing=preprocessing)
    result = train(job, f"file://{tmp_path}/out")
    assert result.metrics["accuracy"] > 0.9
    model = joblib.load(tmp_path / "out" / "model.joblib")
    assert len(model.predict(RAW_ROWS)) == 3


def test_numeric_impute_none_needs_an_estimator_that_takes_nan(tmp_path: Path) -> None:
    job = make_job(
        f"file://{PENGUINS}",
        preprocessing={"numeric": {"impute": "none", "scale": "none"}},
        estimator={"name": "HistGradientBoostingClassifier", "params": {"max_iter": 10}},
    )
    assert train(job, f"file://{tmp_path}/out").metrics["accuracy"] > 0.9


def test_feature_subset_and_booleans(tmp_path: Path) -> None:
    frame = pd.read_csv(PENGUINS)
    frame["heavy"] = (frame["body_mass_g"] > 4500).astype(object)
    frame.loc[frame.index[:5], "heavy"] = None
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    job = make_job(
        f"file://{path}",
        dataset={
            "uri": f"file://{path}",
            "target": "species",
            "features": ["bill_length_mm", "island", "heavy"],
        },
    )
    result = train(job, f"file://{tmp_path}/out")
    assert [c["name"] for c in result.inputs] == ["bill_length_mm", "island", "heavy"]
    assert result.inputs[2]["type"] == "boolean"
    meta = verify_artifact(tmp_path / "out")
    assert meta.feature_stats["heavy"].frequencies is not None
    assert set(meta.feature_stats["heavy"].frequencies) == {"true", "false"}
    model = joblib.load(tmp_path / "out" / "model.joblib")
    rows = pd.DataFrame({"bill_length_mm": [47.0], "island": ["Biscoe"], "heavy": [True]})
    assert model.predict(rows)[0] == "Gentoo"


def test_regression_on_a_csv_with_categories(tmp_path: Path) -> None:
    job = make_job(
        f"file://{PENGUINS}",
        dataset={"uri": f"file://{PENGUINS}", "target": "body_mass_g"},
        estimator={"name": "GradientBoostingRegressor", "params": {"n_estimators": 30}},
    )
    result = train(job, f"file://{tmp_path}/out")
    assert result.task == "regression"
    assert result.metrics["r2"] > 0.5


def test_pvc_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHARD_PVC_ROOT", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "penguins.csv").write_bytes(PENGUINS.read_bytes())
    result = train(make_job("pvc://datasets/penguins.csv"), "pvc://artifacts/penguins/1")
    assert result.artifact_uri == "pvc://artifacts/penguins/1/"
    verify_artifact(tmp_path / "artifacts" / "penguins" / "1", result.digest)


@pytest.fixture
def https_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An HTTPS server on loopback with a self-signed certificate, trusted through
    SSL_CERT_FILE (how a pod would trust a private CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield from serve_penguins(tmp_path, context)


def test_https_dataset(tmp_path: Path, https_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = train(make_job(f"{https_root}/penguins.csv"), f"file://{tmp_path}/out")
    assert result.dataset["digest"] == sha256_file(PENGUINS)
    # Without trusting the certificate the download is refused, not silently accepted.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    with pytest.raises(DatasetUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        train(make_job(f"{https_root}/penguins.csv"), f"file://{tmp_path}/out2")


def test_http_dataset(tmp_path: Path, http_root: str) -> None:
    result = train(make_job(f"{http_root}/penguins.csv"), f"file://{tmp_path}/out")
    assert result.dataset == {
        "uri": f"{http_root}/penguins.csv",
        "digest": sha256_file(PENGUINS),
    }
    with pytest.raises(DatasetUnavailable, match="404"):
        train(make_job(f"{http_root}/missing.csv"), f"file://{tmp_path}/out2")


def test_unreadable_datasets(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        train(make_job(f"file://{tmp_path}/none.csv"), f"file://{tmp_path}/out")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetUnavailable, match="parquet"):
        train(make_job(f"file://{tmp_path}/bad.parquet"), f"file://{tmp_path}/out")
    assert not (tmp_path / "out").exists()


def test_format_from_extension() -> None:
    assert infer_format("s3://b/k/data.csv", None) == "csv"
    assert infer_format("s3://b/k/data.csv.gz", None) == "csv"
    assert infer_format("file:///d/x.parquet", None) == "parquet"
    assert infer_format("https://h/x", "parquet") == "parquet"
    with pytest.raises(InvalidSpec, match=r"dataset\.format"):
        infer_format("https://h/download?id=3", None)
