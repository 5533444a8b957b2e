"""``python -m grm_plugin.testing --config JSON``: the simulated judge server in this process."""

from .sim_server import main

main()
