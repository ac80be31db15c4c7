"""What Orchard's processes say to each other, declared once and imported by both sides.

- The model server (`orchard.serving`) writes Prometheus metrics; the operator's canary
  analysis (`orchard.decisions.analysis`) scrapes and reads them. The names, labels and
  endpoint values it reads are here.

Every image imports this module (server, trainer, operator), so it imports only the
standard library and pydantic (an import-linter contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

from enum import StrEnum

# --- The model server's metrics, as the canary analysis reads them --------------------

REQUESTS = "orchard_requests_total"  # counter (endpoint, code)
LATENCY = "orchard_request_duration_seconds"  # histogram (endpoint, le)
PREDICTED_CLASS = "orchard_predictions_total"  # counter (class); classification
PREDICTED_VALUE = "orchard_prediction_value"  # histogram (le); regression

ENDPOINT_LABEL = "endpoint"
CODE_LABEL = "code"  # the HTTP status, as digits
CLASS_LABEL = "class"


class Endpoint(StrEnum):
    """The `endpoint` label of the server's request metrics: one value per route."""

    V2_INFER = "v2_infer"
    V1_PREDICT = "v1_predict"
    V2_MODEL_METADATA = "v2_model_metadata"
    V2_MODEL_READY = "v2_model_ready"
    V2_SERVER_METADATA = "v2_server_metadata"
    V2_HEALTH_LIVE = "v2_health_live"
    V2_HEALTH_READY = "v2_health_ready"
    V1_MODEL = "v1_model"
    V1_MODELS = "v1_models"
    METRICS = "metrics"
    UNKNOWN = "unknown"  # a path no route serves


# Only inference requests are traffic: probes and scrapes reach the same server.
INFERENCE_ENDPOINTS: tuple[str, ...] = (Endpoint.V2_INFER, Endpoint.V1_PREDICT)
