"""A minimal scikit-learn model server on KServe's public SDK, as KServe documents custom models.

It does what KServe's sklearnserver does (joblib.load, predict), written against the
`kserve` package because the sklearnserver package is not published. Runs in its own
virtual environment: bench/envs/kserve/bin/python bench/servers/kserve_sklearn.py
--model_name m --model_dir DIR --http_port N --grpc_port M
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import joblib
from kserve import Model, ModelServer, model_server
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self._model: Any = None
        self.ready = False

    def load(self) -> bool:
        self._model = joblib.load(os.path.join(self.model_dir, "model.joblib"))
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        instances = get_predict_input(payload)
        result = self._model.predict(instances)
        return get_predict_response(payload, result, self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    ModelServer().start([model])
