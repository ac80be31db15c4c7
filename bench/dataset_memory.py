"""The trainer's peak memory reading a CSV dataset, as a multiple of the file's size.

Writes a mixed CSV (numeric, integer, categorical and boolean columns, some missing
values) of about --megabytes MB, then loads it in a fresh process the way the trainer
does (`orchard.trainer.data.load_dataset`, file:// URI) and reports the process's peak
RSS beside the same process's RSS before reading, and pandas' own `read_csv` on the same
file as the peer.

    python bench/dataset_memory.py [--megabytes 280] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

COLUMNS = [f"x{i}" for i in range(6)] + ["count", "island", "heavy", "species"]

READER = r"""
import json, resource, sys
import pandas as pd
from orchard.api.trainingjob import Dataset
from orchard.trainer.data import load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, how = sys.argv[1], sys.argv[2]
if how == "orchard":
    frame = load_dataset(Dataset(uri=f"file://{path}", target="species")).frame
else:
    frame = pd.read_csv(path)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "peak_kib": peak, "rows": len(frame),
                  "frame_bytes": int(frame.memory_usage(deep=True).sum())}))
"""


def write_csv(path: Path, megabytes: int, seed: int = 7) -> None:
    """About `megabytes` MB of rows; chunked so the writer's own memory stays small."""
    rng = np.random.default_rng(seed)
    islands = np.array(["Biscoe", "Dream", "Torgersen"])
    species = np.array(["Adelie", "Chinstrap", "Gentoo"])
    with path.open("w") as out:
        out.write(",".join(COLUMNS) + "\n")
        while out.tell() < megabytes * 1_000_000:
            n = 100_000
            numbers = rng.normal(40, 10, size=(n, 6)).round(3).astype(str)
            numbers[rng.random((n, 6)) < 0.01] = ""
            count = rng.integers(0, 1000, n).astype(str)
            island = islands[rng.integers(0, 3, n)]
            heavy = np.where(rng.random(n) < 0.5, "True", "False")
            label = species[rng.integers(0, 3, n)]
            table = np.column_stack([numbers, count, island, heavy, label])
            out.write("\n".join(",".join(row) for row in table) + "\n")


def measure(path: Path, how: str) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", READER, str(path), how], capture_output=True, text=True, check=True
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=280)
    parser.add_argument("--dir", default=None, help="where the CSV is written (a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "dataset.csv"
        write_csv(path, args.megabytes)
        size = path.stat().st_size
        print(f"dataset: {size / 1e6:.0f} MB, columns {', '.join(COLUMNS)}")
        for how in ("orchard", "pandas", "orchard", "pandas"):
            got = measure(path, how)
            grown = (got["peak_kib"] - got["before_kib"]) * 1024
            print(
                f"{how:8s} rows {got['rows']:>9,}  peak RSS {got['peak_kib'] / 1024:7.0f} MiB"
                f"  ({got['peak_kib'] * 1024 / size:.2f}x the file; reading grew it by"
                f" {grown / size:.2f}x)  frame {got['frame_bytes'] / 1e6:.0f} MB"
            )


if __name__ == "__main__":
    main()
