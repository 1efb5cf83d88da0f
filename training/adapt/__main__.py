import sys

from training.adapt.cli import main

sys.exit(main())
