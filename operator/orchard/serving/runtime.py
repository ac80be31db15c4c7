"""Which runtime serves a model: its pipeline converted to ONNX, or the pipeline itself.

At load time, after the digests are checked and model.joblib is unpickled, `select`
converts the fitted pipeline whole with skl2onnx and runs the graph with ONNX Runtime
(`orchard serve` does this in a child process, `orchard.serving.isolated`).
The graph serves only when it answers the artifact's held-out rows (heldout.parquet,
read from bytes checked against metadata.json) as the pipeline does: the same label on
every row, class probabilities within `PROBABILITY_TOLERANCE`, a regression's values
within `VALUE_RTOL`. The rows checked are the held-out rows and, so that what production
sends but a test split seldom holds is covered too, some of them again with each input
missing in turn and each string input a value training never saw (`probe_rows`): where
the pipeline refuses such rows (a 500) the graph must refuse them too. Anything else (a
step skl2onnx cannot convert, an ONNX Runtime error, a difference on any row, an artifact
without held-out rows) leaves the pipeline serving, and `Runtime.reason` says why, in
one log line, the model metadata (`parameters.runtime`), `orchard_model_info{runtime}`.

The graph takes one float32 tensor for a model fitted on a plain array, and one
`[rows, 1]` tensor per input column for a pipeline of named columns (float32 for
numbers, strings for categories): the rows the server parsed (`inputs`) go straight in,
with no DataFrame on the way. scikit-learn's imputers take a missing string as NaN,
which skl2onnx cannot convert; the graph is made from a copy of the pipeline whose string
imputers take `MISSING_STRING` instead, and the server writes that for every missing
string (a request holding that very text is answered by the pipeline).

Inputs go in as float32, as scikit-learn's trees take them anyway; linear models and
scalers then compute in float32 where the pipeline computes in float64, hence the
tolerances. A row that lies within float32's rounding of a decision boundary can in
principle be labelled differently from the pipeline; the parity check is what bounds
how often that happens on rows like the training data.

`--runtime` (`ORCHARD_RUNTIME`): `auto` (the default) as above; `sklearn` the pipeline
always; `onnx` the graph or no model at all (the load fails with the reason), checked on
held-out rows when the artifact has them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from orchard.serving.inputs import Array, Rows

if TYPE_CHECKING:
    import pandas as pd

    from orchard.serving.artifact import Column, VerifiedArtifact

log = logging.getLogger("orchard.serving")

Mode = Literal["auto", "onnx", "sklearn"]
MODES: tuple[Mode, ...] = ("auto", "onnx", "sklearn")
ONNX = "onnx"
SKLEARN = "sklearn"

PROBABILITY_TOLERANCE = 1e-5
"""Largest absolute difference allowed between the graph's and the pipeline's class
probabilities on any held-out row. The graph computes in float32, whose rounding near
1.0 is 6e-8 a step: a few hundred operations (a forest's average, a softmax) stay below
1e-6, measured; 1e-5 leaves room for that and is still far below any difference a
threshold or a calibration bin would notice."""

VALUE_RTOL = 1e-5
"""Largest relative difference allowed between a regression's values (plus
`PROBABILITY_TOLERANCE` absolute, for values near 0): float32 carries about 7
significant digits, a sum over 100 trees loses about one of them."""

MAX_HELDOUT_ROWS = 2000  # rows of heldout.parquet checked (the first ones)
PROBE_ROWS = 20  # held-out rows repeated per input, once missing and once unseen
TIE_TOLERANCE = 1e-6
"""Class probabilities of a row this close to its largest are a tie, resolved as
scikit-learn resolves an exact one: the first such class. A forest's graph adds its
trees' votes in float32, so a 10-to-10 vote comes out 0.49999994 against 0.50000006
where the pipeline has 0.5 and 0.5 (`VOTES_KEY`)."""
VOTES_KEY = "orchard.labels"  # in the graph's metadata: "votes" when labels are argmax
MISSING_STRING = "\x00orchard:missing\x00"
UNSEEN_STRING = "\x00orchard:unseen\x00"


class RuntimeRefused(Exception):
    """`--runtime onnx` and the graph cannot serve: the model does not load."""


class PipelineRows(Exception):
    """Rows the graph is known to answer otherwise (a missing number a forest sends down
    another branch): the pipeline answers them (`ModelRunner.predict`)."""


@dataclass(frozen=True)
class Runtime:
    """What serves the model and why: `name` is onnx or sklearn."""

    name: str
    reason: str
    rows: int = 0  # rows the parity check compared


class OnnxModel:
    """A pipeline's ONNX graph in an ONNX Runtime session, fed the server's rows."""

    def __init__(
        self,
        onnx_bytes: bytes,
        columns: Sequence[Column],
        named: bool,
        classes: Array | None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: the server predicts on one inference thread and its pod has one
        # CPU by default (two cores a node). ONNX Runtime's own pool, sized to the
        # node's cores, would only contend with the event loop and be throttled by
        # the CPU limit; one row of a forest takes tens of microseconds, far less
        # than what waking a pool costs.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 4  # its errors reach the server's log as exceptions
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.graph = onnx_bytes
        # A graph whose labels are its classes' largest probability (`convert`): they are
        # taken from the probabilities here, a tie to the first class (`TIE_TOLERANCE`).
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels_from_votes = meta.get(VOTES_KEY) == "votes" and classes is not None
        self.named = named
        self.inputs = [i.name for i in self.session.get_inputs()]
        index = {c.name: j for j, c in enumerate(columns)}
        # Per graph input: its column in the server's rows, and whether it is a number.
        self.feeds = [(index[n], columns[index[n]].numeric) for n in self.inputs] if named else []
        outputs = [o.name for o in self.session.get_outputs()]
        self.outputs = outputs[:2]
        self.classes = classes
        self._last: tuple[Rows, Array, Array | None] | None = None
        # Numeric columns the pipeline takes no missing value in (its estimator raises on
        # NaN): the graph refuses them too, as `compare` found (`refuse_missing`).
        self.no_missing: list[tuple[int, str]] = []
        # Numeric columns whose missing values the graph answers otherwise than the
        # pipeline (trees: scikit-learn sends NaN down a learned branch, ONNX down the
        # "greater" one): a batch with one goes to the pipeline.
        self.pipeline_missing: list[int] = []

    def refuse_missing(self, columns: Sequence[Column], which: Sequence[int]) -> None:
        self.no_missing = [(j, columns[j].name) for j in which]

    def _missing(self, rows: Rows, j: int) -> bool:
        col = rows[:, j] if isinstance(rows, np.ndarray) else rows[j]
        return bool(np.isnan(col).any())

    def feed(self, rows: Rows) -> dict[str, Array]:
        """The graph's inputs from the server's rows (`orchard.serving.inputs`)."""
        for j, name in self.no_missing:
            if self._missing(rows, j):
                raise ValueError(f"input {name} is missing, and the model takes no missing value")
        if self.pipeline_missing:
            if isinstance(rows, np.ndarray) and rows.ndim == 2:
                if np.isnan(rows[:, self.pipeline_missing]).any():
                    raise PipelineRows
            elif any(self._missing(rows, j) for j in self.pipeline_missing):
                raise PipelineRows
        if not self.named:
            matrix = rows if isinstance(rows, np.ndarray) else np.column_stack(rows)
            return {self.inputs[0]: matrix.astype(np.float32)}
        out: dict[str, Array] = {}
        for name, (j, numeric) in zip(self.inputs, self.feeds, strict=True):
            col = rows[:, j] if isinstance(rows, np.ndarray) else rows[j]
            if numeric:
                out[name] = col.astype(np.float32).reshape(-1, 1)
            else:
                out[name] = strings(col).reshape(-1, 1)
        return out

    def run(self, rows: Rows) -> tuple[Array, Array | None]:
        """Labels (or values) and class probabilities (None without them) of the rows;
        the same rows twice in a row (a batch's labels, then its probabilities) run once."""
        last = self._last
        if last is not None and last[0] is rows:
            return last[1], last[2]
        try:
            found = self.session.run(self.outputs, self.feed(rows))
        except (ValueError, PipelineRows):
            raise
        except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument)
            lines = str(exc).strip().splitlines()
            raise ValueError(
                f"the ONNX graph refused the rows: {lines[0] if lines else exc}"
            ) from exc
        labels = np.asarray(found[0])
        labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
        proba = np.asarray(found[1], dtype=np.float64) if len(found) > 1 else None
        if self.labels_from_votes and proba is not None and self.classes is not None:
            near = proba >= proba.max(axis=1, keepdims=True) - TIE_TOLERANCE
            labels = self.classes[np.argmax(near, axis=1)]
        elif self.classes is not None:
            labels = labels.astype(self.classes.dtype, copy=False)
        else:
            labels = labels.astype(np.float64)
        self._last = (rows, labels, proba)
        return labels, proba

    def predict(self, rows: Rows) -> Array:
        return self.run(rows)[0]

    def probabilities(self, rows: Rows) -> Array:
        proba = self.run(rows)[1]
        if proba is None:
            raise ValueError("the ONNX graph has no probabilities")
        return proba


def strings(col: Array) -> Array:
    """A string column for the graph: every missing value (NaN, None) as MISSING_STRING."""
    out = np.empty(len(col), dtype=object)
    for i, v in enumerate(col):
        if isinstance(v, str):
            if v == MISSING_STRING:
                raise ValueError("a string input holds the text that stands for missing")
            out[i] = v
        else:
            out[i] = MISSING_STRING
    return out


def convert(
    model: Any, columns: Sequence[Column], named: bool, width: int, classification: bool
) -> bytes:
    """The fitted pipeline as an ONNX graph; a classifier's probabilities as one tensor
    (no ZipMap)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    initial: list[tuple[str, Any]]
    if named:
        initial = [
            (c.name, FloatTensorType([None, 1]) if c.numeric else StringTensorType([None, 1]))
            for c in columns
        ]
    else:
        initial = [("input", FloatTensorType([None, width]))]
    options = {"zipmap": False} if classification else None
    graph = to_onnx(_missing_as_text(model), initial_types=initial, options=options)
    _split_as_trained(graph, model)
    final = _steps(model)[-1]
    if classification and _trees_of(final):
        # scikit-learn labels a forest's row with its most probable class (a tree's, a
        # boosted ensemble's alike), the first on a tie (`OnnxModel.labels_from_votes`).
        entry = graph.metadata_props.add()
        entry.key, entry.value = VOTES_KEY, "votes"
    data: bytes = graph.SerializeToString()
    return data


TREE_ENSEMBLES = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")


def _split_as_trained(graph: Any, model: Any) -> None:
    """Make the graph's trees split rows exactly as scikit-learn's do.

    Two things skl2onnx leaves otherwise. A missing value: scikit-learn's trees (1.3 on)
    keep, per split, where NaN goes (`tree_.missing_go_to_left`: the side that held the
    missing values in training, else the side with more rows); skl2onnx writes
    `nodes_missing_value_tracks_true` 0 for every node, which sends NaN to the "greater"
    side. A threshold: scikit-learn compares float32(x) with a float64 threshold (the
    midpoint of two float32 training values); skl2onnx rounds the threshold to the
    nearest float32, which can be the upper value itself, so a row holding exactly that
    value goes left in the graph and right in the pipeline. Rounded down instead, the
    float32 comparison is the float64 one for every float32 input.

    Each tree ensemble of the graph whose trees match one estimator's, node for node,
    gets that estimator's branches and thresholds; one that matches none is left as it
    is, and the parity check finds what it answers otherwise."""
    candidates = [trees for step in _steps(model) if (trees := _trees_of(step))]
    for node in graph.graph.node:
        if node.op_type not in TREE_ENSEMBLES or not candidates:
            continue
        attrs = {a.name: a for a in node.attribute}
        if not {"nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_values"} <= attrs.keys():
            continue
        tree_ids, node_ids = list(attrs["nodes_treeids"].ints), list(attrs["nodes_nodeids"].ints)
        counts = np.bincount(tree_ids).tolist() if tree_ids else []
        matching = [t for t in candidates if [x.tree_.node_count for x in t] == counts]
        if len(matching) != 1:
            continue
        trees = matching[0]
        split = [m.decode() == "BRANCH_LEQ" for m in attrs["nodes_modes"].strings]
        tracks = [
            int(leq and bool(trees[t].tree_.missing_go_to_left[i]))
            for t, i, leq in zip(tree_ids, node_ids, split, strict=True)
        ]
        pairs = zip(tree_ids, node_ids, strict=True)
        exact = np.array([trees[t].tree_.threshold[i] for t, i in pairs])
        values = np.where(split, _float32_below(exact), np.asarray(attrs["nodes_values"].floats))
        from onnx import helper

        for name, data in (
            ("nodes_missing_value_tracks_true", tracks),
            ("nodes_values", [float(v) for v in values.astype(np.float32)]),
        ):
            if name in attrs:
                node.attribute.remove(attrs[name])
            node.attribute.append(helper.make_attribute(name, data))


def _float32_below(values: Array) -> Array:
    """The largest float32 at or below each float64 value."""
    near = values.astype(np.float32)
    return np.where(near > values, np.nextafter(near, np.float32(-np.inf)), near)


def _trees_of(step: Any) -> list[Any]:
    """A fitted tree, or an ensemble's trees in the order skl2onnx numbers them; [] for
    anything else, or trees without learned missing branches (scikit-learn < 1.3)."""
    if hasattr(step, "tree_"):
        trees = [step]
    elif hasattr(step, "estimators_"):
        trees = list(np.asarray(step.estimators_, dtype=object).ravel())
        if not all(hasattr(t, "tree_") for t in trees):
            return []
    else:
        return []
    return trees if all(hasattr(t.tree_, "missing_go_to_left") for t in trees) else []


def _missing_as_text(model: Any) -> Any:
    """A copy of the pipeline whose imputers of strings take MISSING_STRING as missing."""
    from sklearn.impute import SimpleImputer

    found = [
        step
        for step in _steps(model)
        if isinstance(step, SimpleImputer)
        and getattr(step, "statistics_", None) is not None
        and np.asarray(step.statistics_).dtype.kind == "O"
    ]
    if not found:
        return model
    model = copy.deepcopy(model)
    for step in _steps(model):
        if isinstance(step, SimpleImputer) and np.asarray(step.statistics_).dtype.kind == "O":
            step.missing_values = MISSING_STRING
    return model


def _steps(model: Any) -> list[Any]:
    """Every estimator inside a pipeline or column transformer, depth first."""
    out = [model]
    for _, step in getattr(model, "steps", []):
        out += _steps(step)
    for _, step, _ in getattr(model, "transformers_", []):
        if not isinstance(step, str):
            out += _steps(step)
    return out


def rows_of(frame: pd.DataFrame, columns: Sequence[Column]) -> Rows:
    """Held-out rows in the form the server parses requests into (`inputs`)."""
    cols: list[Array] = []
    for c in columns:
        series = frame[c.name]
        if c.numeric:
            cols.append(series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            values = series.astype(object).to_numpy()
            cols.append(np.array([v if isinstance(v, str) else np.nan for v in values], object))
    if all(c.numeric for c in columns):
        return np.column_stack(cols) if cols else np.empty((len(frame), 0))
    return cols


@dataclass(frozen=True)
class Probe:
    """Rows the graph must answer as the pipeline does; `column` and `fill` say which
    input they changed (None: the held-out rows as they are)."""

    name: str
    rows: Rows
    column: int | None = None
    fill: str = ""
    numeric: bool = False


def probe_rows(rows: Rows, columns: Sequence[Column]) -> list[Probe]:
    """The held-out rows, then some of them with each input missing, and each string input
    a value training never saw: each group checked on its own."""
    groups = [Probe("held-out rows", rows)]
    n = min(PROBE_ROWS, len(rows) if isinstance(rows, np.ndarray) else len(rows[0]))
    for j, c in enumerate(columns):
        fills: list[tuple[str, Any]] = [("missing", np.nan)]
        if not c.numeric:
            fills.append(("unseen", UNSEEN_STRING))
        for what, value in fills:
            part: Rows
            if isinstance(rows, np.ndarray):
                part = rows[:n].copy()
                part[:, j] = value
            else:
                part = [col[:n].copy() for col in rows]
                part[j][:] = value
            groups.append(Probe(f"rows with {c.name} {what}", part, j, what, c.numeric))
    return groups


Answer = tuple[Array | None, Array | None, BaseException | None]
Reference = tuple[Callable[[Rows], Array], Callable[[Rows], Array] | None]


def _answer(
    predict: Callable[[Rows], Array], proba: Callable[[Rows], Array] | None, rows: Rows
) -> Answer:
    try:
        return predict(rows), proba(rows) if proba is not None else None, None
    except Exception as exc:
        return None, None, exc


@dataclass
class Parity:
    """What `compare` found: the first difference (None: none), the rows compared, and
    the numeric inputs the pipeline takes no missing value in, and those whose missing
    values the graph answers otherwise."""

    difference: str | None = None
    rows: int = 0
    no_missing: list[int] = field(default_factory=list)
    pipeline_missing: list[int] = field(default_factory=list)


def compare(
    reference: Reference, native: OnnxModel, groups: list[Probe], classification: bool
) -> Parity:
    """The pipeline's answers (`reference`: labels, and probabilities or None) against the
    graph's, group by group. Where the pipeline refuses a missing number (its estimator
    takes no NaN) the graph is made to refuse it too, rather than answer what the
    pipeline never would, and where the two answer a missing number otherwise, rows
    missing it go to the pipeline; any other refusal of one side only, and any other
    difference, is a difference."""
    predict, proba = reference
    found = Parity()
    for group in groups:
        want, want_proba, refused = _answer(predict, proba, group.rows)
        got, got_proba, failed = _answer(
            native.predict, native.probabilities if proba is not None else None, group.rows
        )
        if refused is not None:
            if failed is None and group.numeric and group.fill == "missing":
                assert group.column is not None
                found.no_missing.append(group.column)
            elif failed is None:
                why = f"the pipeline refuses {group.name} ({type(refused).__name__})"
                found.difference = f"{why}, the ONNX graph answers them"
                return found
            continue
        if failed is not None:
            found.difference = f"the ONNX graph fails on {group.name}: {_one_line(failed)}"
            return found
        assert want is not None and got is not None
        found.difference = _differ(want, got, want_proba, got_proba, classification, group.name)
        if found.difference is not None and group.numeric and group.fill == "missing":
            assert group.column is not None
            found.pipeline_missing.append(group.column)
            found.difference = None
            continue
        if found.difference is not None:
            return found
        found.rows += len(want)
    return found


def _differ(
    want: Array,
    got: Array,
    want_proba: Array | None,
    got_proba: Array | None,
    classification: bool,
    name: str,
) -> str | None:
    n = len(want)
    if len(got) != n:
        return f"{len(got)} answers for {n} {name}"
    if classification:
        differ = int(np.count_nonzero(np.asarray(got) != np.asarray(want)))
        if differ:
            return f"labels differ on {differ} of {n} {name}"
    else:
        close = np.isclose(
            np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
            rtol=VALUE_RTOL, atol=PROBABILITY_TOLERANCE,
        )  # fmt: skip
        if not close.all():
            return f"values differ beyond {VALUE_RTOL:g} on {int((~close).sum())} of {n} {name}"
    if want_proba is not None and got_proba is not None:
        if got_proba.shape != want_proba.shape:
            return f"probabilities of shape {got_proba.shape}, not {want_proba.shape}"
        worst = float(np.max(np.abs(got_proba - want_proba))) if got_proba.size else 0.0
        if not worst <= PROBABILITY_TOLERANCE:
            return f"probabilities differ by {worst:.2g} (> {PROBABILITY_TOLERANCE:g}) on {name}"
    return None


def select(
    model: Any,
    columns: Sequence[Column],
    *,
    named: bool,
    width: int,
    classes: Array | None,
    classification: bool,
    reference: Reference,
    heldout: pd.DataFrame | None,
    mode: Mode = "auto",
) -> tuple[Runtime, OnnxModel | None]:
    """The runtime that serves `model` (module docstring), and its graph when it is ONNX.

    `reference` is how the server predicts with the pipeline (labels, and probabilities
    or None); `heldout` the artifact's held-out rows (None: it has none)."""
    if mode == SKLEARN:
        return Runtime(SKLEARN, "--runtime sklearn"), None
    rows: Rows | None = None
    if heldout is not None and len(heldout):
        missing = [c.name for c in columns if c.name not in heldout.columns]
        if missing:
            return _refuse(mode, f"the held-out rows lack {', '.join(missing)}")
        rows = rows_of(heldout.head(MAX_HELDOUT_ROWS), columns)
    elif mode == "auto":
        return Runtime(SKLEARN, "no held-out rows"), None
    try:
        native = OnnxModel(
            convert(model, columns, named, width, classification), columns, named, classes
        )
    except Exception as exc:  # skl2onnx and ONNX Runtime raise anything
        return _refuse(mode, f"no ONNX graph: {_one_line(exc)}")
    if rows is None:
        return Runtime(ONNX, "forced by --runtime onnx; not checked: no held-out rows"), native
    try:
        parity = compare(reference, native, probe_rows(rows, columns), classification)
    except Exception as exc:  # a fault of the check itself: the pipeline answers
        return _refuse(mode, f"parity check failed: {_one_line(exc)}")
    if parity.difference is not None:
        return _refuse(mode, parity.difference)
    compared = parity.rows
    native.refuse_missing(columns, parity.no_missing)
    native.pipeline_missing = parity.pipeline_missing
    what = "labels" if classification else f"values within {VALUE_RTOL:g}"
    extra = f", probabilities within {PROBABILITY_TOLERANCE:g}" if reference[1] is not None else ""
    if parity.pipeline_missing:
        names = [columns[j].name for j in parity.pipeline_missing]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        extra += f"; rows missing {shown} answered by the pipeline"
    reason = f"{what} as the pipeline's on {compared} rows{extra}"
    return Runtime(ONNX, reason, compared), native


def _refuse(mode: Mode, reason: str) -> tuple[Runtime, None]:
    if mode == ONNX:
        raise RuntimeRefused(f"--runtime onnx: {reason}")
    return Runtime(SKLEARN, reason), None


def heldout_frame(artifact: VerifiedArtifact) -> pd.DataFrame | None:
    """The artifact's held-out rows, parsed from bytes checked against metadata.json's
    sha256 (None: the artifact has none, or they do not match)."""
    import io

    import pandas as pd

    from orchard.artifacts import sha256_bytes

    info = artifact.metadata.heldout
    if info is None:
        return None
    expected = artifact.metadata.files.get(info.file)
    if expected is None:
        log.warning("metadata.json names held-out rows %s without their digest", info.file)
        return None
    try:
        raw = (artifact.directory / info.file).read_bytes()
    except OSError as exc:
        log.warning("cannot read the held-out rows: %s", exc.strerror or exc)
        return None
    if sha256_bytes(raw) != expected:
        log.warning("%s does not match its digest in metadata.json", info.file)
        return None
    frame: pd.DataFrame = pd.read_parquet(io.BytesIO(raw))
    return frame


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."
