"""``python -m simulations ...`` is the ``flwr-byz`` command line."""

import sys

from simulations.cli import main

sys.exit(main())
