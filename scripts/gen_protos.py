"""Regenerate the Python stubs in recstack/v1 from protos/recstack/v1/*.proto.

Usage: python scripts/gen_protos.py [--out DIR]
The stubs are committed; tests/unit/test_protos_fresh.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "recstack" / "v1").glob("*.proto"))
    well_known = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    init = out / "recstack" / "v1" / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC stubs (package recstack.v1). Do not edit."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
