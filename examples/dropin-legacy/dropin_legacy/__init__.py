"""dropin-legacy: a Flower PyTorch app (legacy server_fn API) using a flwr-byz strategy."""
