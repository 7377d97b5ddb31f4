"""``python -m spikingformer.cli``: the command line, as torchrun starts it."""
import sys

from . import main

sys.exit(main())
