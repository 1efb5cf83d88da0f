import sys

from training.prune.cli import main

sys.exit(main())
