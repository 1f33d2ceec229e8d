"""Entrypoint for ``ray job submit --working-dir . -- python jobs/audit.py SOURCE --out OUT ...``.

Takes exactly the arguments of ``ood-ray audit``. Inside a submitted job ``RAY_ADDRESS`` is set,
so the audit joins the cluster the job runs on instead of starting a local Ray.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ood_ray.cli import add_audit_arguments, audit_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/audit.py", description="ood-ray audit as a Ray job")
    add_audit_arguments(parser)
    return audit_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
