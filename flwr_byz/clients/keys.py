"""Message config keys shared by the ClientApp and the server-side adversary helpers."""

PHASE_KEY = "byz-phase"  # "collect" (publish own honest vector, reply ignored) | "real"
HONEST_COUNT_KEY = "byz-honest-count"  # honest replies received this round (AdversaryGrid)
ADDRESS_KEY = "coordinator-address"  # overrides the run config's coordinator-address
ROLE_KEY = "role"  # ConfigRecord key of the query handler's answer (discover_roles)
