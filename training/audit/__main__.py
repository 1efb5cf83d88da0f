import sys

from training.audit.cli import main

sys.exit(main())
