"""``python -m training.finetune``: see ``training.finetune.cli``."""

from __future__ import annotations

from training.finetune.cli import main

raise SystemExit(main())
