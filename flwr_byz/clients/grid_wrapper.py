"""The delegating ``Grid`` wrapper, defined once in :mod:`flwr_byz.grid_wrapper`."""

from flwr_byz.grid_wrapper import GridWrapper

__all__ = ["GridWrapper"]
