"""What every benchmark on ``../shared/data`` does first: check the data is there, keep Ray's
token authentication off for the local cluster it starts, and make its work folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def prepare(work: str | Path | None = None) -> Path | None:
    """The work folder (made), or ``None`` after saying why when the benchmark data is missing."""
    if not SHARED.is_dir():
        print(f"benchmark data not found at {SHARED}", file=sys.stderr)
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if work is None:
        return SHARED
    path = Path(work)
    path.mkdir(parents=True, exist_ok=True)
    return path
