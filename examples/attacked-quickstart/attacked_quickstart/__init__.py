"""attacked-quickstart: a quickstart-shaped Flower app attacked through flwr_byz.mods."""
