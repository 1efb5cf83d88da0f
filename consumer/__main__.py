from __future__ import annotations

import sys

from consumer.runtime.signals import defer_signals

if sys.argv[1:2] == ["run"]:
    # Before the heavy imports: a SIGTERM while the consumer starts must still stop it cleanly.
    defer_signals()

from consumer.cli import main

raise SystemExit(main())
