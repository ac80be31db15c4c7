"""What a client may send the server, and what of it the server keeps: bounds declared once.

- String features reach the metrics as label values: at most `MAX_CATEGORIES` distinct
  ones per feature (later ones count as `__other__`), each cut to `MAX_LABEL_CHARS`
  characters, with control and line-separator characters written as `\\xHH`/`\\uHHHH`.
- Every number must lie within ±`MAX_ABS_VALUE`, float32's range: scikit-learn's tree
  models (and every estimator that casts to float32) raise beyond it, and so bounded,
  the server's sums of squares cannot overflow. Beyond it: 400 invalid_value. Missing
  values are `null` (NaN to the model); JSON has no NaN or Infinity, and a literal too
  large for a double is refused as invalid_value too.
"""

from __future__ import annotations

# float32's largest finite value (numpy.finfo(numpy.float32).max), as a Python float.
MAX_ABS_VALUE = 3.4028234663852886e38
# Distinct values of a string feature counted by name in the metrics; the rest: "__other__".
MAX_CATEGORIES = 50
# Characters of a string feature's value kept as a label value; longer ones end in "…".
MAX_LABEL_CHARS = 64
