"""``python -m ood_ray`` = the ``ood-ray`` command."""

import sys

from ood_ray.cli import main

sys.exit(main())
