"""The trainer: `orchard train`, run inside a TrainingJob's pods and usable locally.

Kept free of imports here so that `orchard.trainer.search` (the trial list) can be used
by the operator without scikit-learn installed.
"""
