"""``python -m sidecar`` is the same as the ``anomaly-sidecar`` command."""

from sidecar.cli import main

raise SystemExit(main())
