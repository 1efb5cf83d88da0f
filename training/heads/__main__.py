"""``python -m training.heads train|report``: see ``training.heads.cli``."""

from __future__ import annotations

from training.heads.cli import main

raise SystemExit(main())
