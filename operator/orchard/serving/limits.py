"""What a client may send the server: the bounds on values, declared once.

Every number must lie within ±`MAX_ABS_VALUE`, float32's range: scikit-learn's tree
models (and every estimator that casts to float32) raise beyond it, and so bounded, the
server's sums of squares cannot overflow. Beyond it: 400 invalid_value. Missing values
are `null` (NaN to the model); JSON has no NaN or Infinity, and a literal too large for
a double is refused as invalid_value too.
"""

from __future__ import annotations

# float32's largest finite value (numpy.finfo(numpy.float32).max), as a Python float.
MAX_ABS_VALUE = 3.4028234663852886e38
