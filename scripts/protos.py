"""The Python modules of the model server's proto, generated with grpcio-tools' protoc.

    python scripts/protos.py          # write them beside the .proto (`make protos`)
    python scripts/protos.py --check  # exit 1 when the committed ones are not what it writes

`operator/orchard/serving/proto/open_inference_grpc.proto` gives
`open_inference_grpc_pb2.py` (the messages) and its `.pyi` (their types, for mypy). No
`_pb2_grpc.py`: `serving/grpc_service.py` builds the service's handlers from the
descriptor itself, typed. The generated files are committed so that the wheels, the
server image and a checkout without grpcio-tools import them as they are; protoc's
output depends on its version, so the dev extra pins grpcio-tools, and the check (run by
`make lint` and a unit test) fails when the committed files and the .proto part ways.
protoc runs in its own process: nothing here imports the generated module, whose
`inference.*` messages would clash with those of any other client of the protocol
(tritonclient's) loaded in the same interpreter.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "operator"  # protoc's include root: the module is orchard.serving.proto.*
PROTO = Path("orchard/serving/proto/open_inference_grpc.proto")
GENERATED = (PROTO.with_name(PROTO.stem + "_pb2.py"), PROTO.with_name(PROTO.stem + "_pb2.pyi"))


def generate(out: Path) -> list[Path]:
    """Run protoc on the .proto into `out`; the paths of the files it wrote."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={ROOT}",
         f"--python_out={out}", f"--pyi_out={out}", str(PROTO)],
        check=True,
    )  # fmt: skip
    return [out / path for path in GENERATED]


def stale() -> list[Path]:
    """The committed generated files that differ from what protoc writes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            path
            for path, new in zip(GENERATED, fresh, strict=True)
            if not (ROOT / path).exists() or (ROOT / path).read_bytes() != new.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for path in differ:
            print(f"{ROOT.name}/{path} is not what protoc makes of {PROTO.name}: "
                  "run `make protos`", file=sys.stderr)  # fmt: skip
        return 1 if differ else 0
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
