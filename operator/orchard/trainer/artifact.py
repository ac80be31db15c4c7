"""Writing the artifact: model.joblib plus metadata.json, per docs/artifact-format.md."""

from __future__ import annotations

import logging
import math
import platform
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from orchard.artifacts import (
    FORMAT_VERSION,
    HELDOUT_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    metadata_bytes,
    sha256_bytes,
    sha256_file,
)
from orchard.artifacts.drift import DECILES

log = logging.getLogger("orchard.trainer")

TOP_FREQUENCIES = 20
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
_LIBRARIES = ("numpy", "pandas", "scipy", "joblib", "pyarrow")


def _num(value: Any) -> float | None:
    v = float(value)
    return round(v, 6) if math.isfinite(v) else None


def _key(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    return str(value)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can carry."""
    return value.item() if isinstance(value, np.generic) else value


def decile_bins(values: np.ndarray) -> dict[str, list[float]]:
    """Drift bins fixed by the training rows: edges at their deciles (ties merged), and the
    share of the rows in each bin, counted by the rule production counts with
    (`orchard.artifacts.drift.NumericBins`: a value on an edge belongs to the bin above)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return {"edges": [], "shares": [1.0]}
    # Deciles that are values of the rows (no interpolation): a discrete input keeps its values.
    edges = np.unique(np.round(np.quantile(finite, DECILES, method="inverted_cdf"), 6))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "shares": [round(float(c) / len(finite), 6) for c in counts],
    }


def feature_stats(frame: pd.DataFrame, schema: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per-input statistics of the training data: the baseline for drift checks.

    Numbers: mean, std, min, max, the 10/25/50/75/90th percentiles of the present
    values and their decile drift bins (`decile_bins`). Strings and booleans: the share of
    each of the most frequent values among the present values (booleans keyed
    "true"/"false"), which are also their drift bins.
    """
    out: dict[str, dict[str, Any]] = {}
    for col in schema:
        series = frame[col["name"]]
        present = series.dropna()
        stats: dict[str, Any] = {
            "type": col["type"],
            "count": len(series),
            "missing": int(series.isna().sum()),
        }
        if col["type"] in ("number", "integer") and len(present) > 0:
            values = present.astype(float).to_numpy()
            stats.update(
                mean=_num(values.mean()),
                std=_num(values.std(ddof=0)),
                min=_num(values.min()),
                max=_num(values.max()),
                quantiles=[_num(q) for q in np.quantile(values, QUANTILES)],
                bins=decile_bins(values),
            )
        elif len(present) > 0:
            shares = present.map(_key).value_counts(normalize=True).head(TOP_FREQUENCIES)
            stats["frequencies"] = {str(k): round(float(v), 6) for k, v in shares.items()}
        out[col["name"]] = {k: v for k, v in stats.items() if v is not None}
    return out


def library_versions() -> dict[str, str]:
    """The Python and library versions the model was trained with."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def sklearn_version() -> str:
    return importlib_metadata.version("scikit-learn")


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_heldout(path: Path, rows: pd.DataFrame) -> bool:
    """The held-out rows as Parquet; False (nothing written) for columns Parquet cannot
    hold, such as one mixing numbers and text: the artifact is valid without them."""
    import pyarrow as pa

    try:
        rows.to_parquet(path, index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        log.warning("held-out rows not saved: %s", type(exc).__name__)
        path.unlink(missing_ok=True)
        return False
    return True


def write_artifact(
    directory: Path,
    pipeline: Pipeline,
    fields: dict[str, Any],
    heldout: pd.DataFrame | None = None,
    *,
    target: str | None = None,
    seed: int | None = None,
) -> tuple[Metadata, str]:
    """Dump the pipeline (and the held-out rows, with their `target` column, as
    heldout.parquet), then write metadata.json listing their sha256.

    `fields` holds every metadata field but formatVersion, files, heldout and createdAt.
    Returns the metadata and the artifact's digest (sha256 of metadata.json's bytes).
    """
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    joblib.dump(pipeline, model_path, compress=3)
    files = {MODEL_FILE: sha256_file(model_path)}
    extra: dict[str, Any] = {}
    heldout_path = directory / HELDOUT_FILE
    if heldout is not None and target is not None and write_heldout(heldout_path, heldout):
        files[HELDOUT_FILE] = sha256_file(heldout_path)
        extra["heldout"] = {"file": HELDOUT_FILE, "rows": len(heldout), "target": target}
        if seed is not None:
            extra["heldout"]["seed"] = seed
    metadata = Metadata.model_validate(
        {
            "formatVersion": FORMAT_VERSION,
            **fields,
            **extra,
            "files": files,
            "createdAt": utc_now(),
        }
    )
    raw = metadata_bytes(metadata)
    (directory / METADATA_FILE).write_bytes(raw)
    return metadata, sha256_bytes(raw)
