"""`python -m services.feature_stream`: run the feature-stream worker (settings from the environment)."""

from __future__ import annotations

import sys

from pydantic import ValidationError


def main() -> int:
    from services.feature_stream.app import run_worker
    from services.feature_stream.settings import StreamSettings

    try:
        settings = StreamSettings()
    except ValidationError as exc:
        missing = ", ".join(str(e["loc"][0]) for e in exc.errors())
        sys.stderr.write(f"feature_stream: invalid or missing settings: {missing}\n{exc}\n")
        return 2
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
