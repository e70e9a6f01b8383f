"""Flower ClientApp, honest and malicious clients, and the colluding coordinator.

The ClientApp itself is ``flwr_byz.clients.app:app`` (imported lazily: importing ``clients`` stays
cheap).
"""

from flwr_byz.schema import ClientConfig

from .adversary import AdversaryGrid, discover_roles, needs_for_run_config
from .channel import ChannelFaultGrid
from .coordinator import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorTimeoutError,
    start_coordinator,
)
from .malicious import MALICIOUS_CLIENTS, backdoor_accuracy

__all__ = [
    "MALICIOUS_CLIENTS",
    "AdversaryGrid",
    "ChannelFaultGrid",
    "ClientConfig",
    "CoordinatorClient",
    "CoordinatorError",
    "CoordinatorTimeoutError",
    "backdoor_accuracy",
    "discover_roles",
    "needs_for_run_config",
    "start_coordinator",
]
