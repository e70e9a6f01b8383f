"""attacked-legacy: a legacy-API Flower app (client_fn, server_fn) attacked via flwr_byz.mods."""
