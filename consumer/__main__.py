from __future__ import annotations

from consumer.cli import main

raise SystemExit(main())
