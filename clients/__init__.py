"""Flower ClientApp, honest and malicious clients, and the colluding coordinator."""
