"""Byzantine behaviour for any Flower app: a client mod and a one-line server-side grid wrapper.

```python
app = ClientApp(train=..., mods=[byzantine_mod()])  # or ClientApp(client_fn=..., mods=[...])
grid = adversary_grid(grid)  # in the ServerApp, only for omniscient attacks (ALIE, IPM, ...)
app = adversary_app(ServerApp(server_fn=server_fn))  # the same for a legacy ServerApp
x, y = poison_batch(context, x, y)  # in the user's training, for label_flip / backdoor
```
"""

from ._grid import RelayGrid, adversary_app, adversary_grid
from ._mod import (
    ATTACKED,
    NEEDS_HONEST,
    RELAY_ARRAYS,
    RELAY_CONFIG,
    ByzantineMod,
    active_role,
    apply_omniscient,
    apply_own,
    byzantine_mod,
    is_byzantine,
    poison_batch,
    server_round,
)
from ._role import DATA, OMNISCIENT, OWN_VECTOR, SUPPORTED, Role, resolve_role

__all__ = [
    "ATTACKED",
    "ByzantineMod",
    "DATA",
    "NEEDS_HONEST",
    "OMNISCIENT",
    "OWN_VECTOR",
    "RELAY_ARRAYS",
    "RELAY_CONFIG",
    "SUPPORTED",
    "RelayGrid",
    "Role",
    "active_role",
    "adversary_app",
    "adversary_grid",
    "apply_omniscient",
    "apply_own",
    "byzantine_mod",
    "is_byzantine",
    "poison_batch",
    "resolve_role",
    "server_round",
]
