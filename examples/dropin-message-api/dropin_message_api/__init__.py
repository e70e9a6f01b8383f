"""dropin-message-api: a Flower PyTorch app using a flwr-byz strategy."""
