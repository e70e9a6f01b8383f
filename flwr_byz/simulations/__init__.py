"""Experiments on the Flower simulation engine: ServerApp, YAML configs, runner, plots."""
