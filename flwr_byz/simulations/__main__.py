"""``python -m flwr_byz.simulations ...`` is the ``flwr-byz`` command line."""

import sys

from flwr_byz.simulations.cli import main

sys.exit(main())
