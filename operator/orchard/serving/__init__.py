"""The model server: Open Inference Protocol V1/V2 over REST for one scikit-learn artifact.

`orchard serve` (see `main`) verifies the artifact, loads it, and runs the ASGI app in
`app` on uvicorn. Heavy imports (numpy, scikit-learn, pandas) happen only when a model
is loaded, so importing this package is cheap.
"""
