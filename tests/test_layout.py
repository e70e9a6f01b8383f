"""One flat-vector layout (flwr_byz.layout) for clients, server and mod: a client's vector is the
server's row of that client, integer buffers stay out of it on every side."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flwr_byz.clients.honest import flat_gradient
from flwr_byz.clients.records import flatten, record_to_state, unflatten, vector_to_record
from flwr_byz.layout import ModelLayout, flatten_state, state_dim, unflatten_state
from flwr_byz.mods._records import flat, to_arrays


def _model_with_int_buffer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))


def _by_hand(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The floating tensors in key order, written out without the library."""
    return torch.cat([v.reshape(-1).float() for v in state.values() if v.dtype != torch.int64])


def test_client_vector_is_the_servers_row_and_the_mods() -> None:
    model = _model_with_int_buffer()
    model.train()
    model(torch.randn(5, 6))  # num_batches_tracked becomes 1
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert any(v.dtype == torch.int64 for v in state.values())
    client = flatten(state)
    assert torch.equal(client, _by_hand(state)) and client.numel() == state_dim(state)
    record = vector_to_record(client, state)
    arrays = {key: array.numpy() for key, array in record.items()}
    assert arrays["2.num_batches_tracked"].dtype == np.int64
    server = ModelLayout(arrays).flatten(arrays)
    assert torch.equal(server, client)
    assert torch.equal(flat(to_arrays(record), torch.float32), client)


def test_unflatten_keeps_integer_buffers_and_round_trips() -> None:
    state = _model_with_int_buffer().state_dict()
    vector = torch.arange(state_dim(state), dtype=torch.float32)
    back = unflatten(vector, state)
    assert list(back) == list(state)
    assert torch.equal(back["2.num_batches_tracked"], state["2.num_batches_tracked"])
    assert torch.equal(flatten_state(back), vector)
    assert torch.equal(flatten(record_to_state(vector_to_record(vector, state))), vector)
    assert torch.equal(flatten_state(unflatten_state(vector, state)), vector)


def test_the_gradient_has_the_layouts_length() -> None:
    model = _model_with_int_buffer()
    vector, _ = flat_gradient(model, torch.randn(4, 6), torch.randint(3, (4,)))
    state = model.state_dict()
    assert vector.numel() == state_dim(state)
    grads = {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()}
    for name, parameter in model.named_parameters():
        grads[name] = parameter.grad.detach()
    assert torch.equal(vector, torch.cat([g.reshape(-1) for g in grads.values()]))
