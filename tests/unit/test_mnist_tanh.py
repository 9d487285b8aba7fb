"""The ``mnist_tanh`` task: the MNIST CNN with tanh, the model the DP benchmark trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedshield.config import load_config, parse_config
from fedshield.federation.participant import train_config_of
from fedshield.secagg.randomness import deterministic_random
from fedshield.training.datasets import DataSpec
from fedshield.training.dpsgd import DPSGDConfig, dataset_tensors, train_dp_sgd
from fedshield.training.tasks import (
    TaskContext,
    call_task,
    mnist_cnn,
    mnist_cnn_tanh,
    model_weights,
    resolve_task,
)

ROOT = Path(__file__).resolve().parents[2]


def _ctx(role: str = "participant", seed: int = 3) -> TaskContext:
    return TaskContext(
        role=role,  # type: ignore[arg-type]
        name="site-0",
        partition_index=0,
        num_partitions=10,
        data=DataSpec(dataset="mnist", partition="shards", shards_per_partition=4, seed=11),
        seed=seed,
    )


def _kinds(model: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in model.modules() if not isinstance(m, nn.Sequential)]


def test_mnist_tanh_is_the_mnist_cnn_with_tanh_in_place_of_relu() -> None:
    assert resolve_task("mnist_tanh") is mnist_cnn_tanh
    relu = mnist_cnn(_ctx(role="coordinator")).model
    tanh = mnist_cnn_tanh(_ctx(role="coordinator")).model
    assert _kinds(tanh) == [nn.Tanh if k is nn.ReLU else k for k in _kinds(relu)]
    assert nn.ReLU not in _kinds(tanh) and _kinds(tanh).count(nn.Tanh) == 2
    assert sum(p.numel() for p in tanh.parameters()) == 18_378
    # Activations have no weights: the same seed gives the very same initial weights...
    a, b = model_weights(relu), model_weights(tanh)
    assert list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a)
    # ... and a different function of the input.
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(relu(x), tanh(x))
        assert tanh(x).shape == (4, 10)


def test_mnist_tanh_gives_the_sites_the_same_data_as_mnist() -> None:
    ours = call_task(resolve_task("mnist_tanh"), _ctx())
    theirs = call_task(resolve_task("mnist"), _ctx())
    assert ours.train_loader is not None and theirs.train_loader is not None
    x1, y1 = dataset_tensors(ours.train_loader)
    x2, y2 = dataset_tensors(theirs.train_loader)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_mnist_tanh_trains_with_full_batch_dp_sgd() -> None:
    # The benchmark's DP setting: sampling rate 1, one step a local epoch, every record in it.
    parts = mnist_cnn_tanh(_ctx())
    assert parts.train_loader is not None
    x, y = dataset_tensors(parts.train_loader)
    x, y = x[:40], y[:40]
    start = torch.cat([p.detach().flatten() for p in parts.model.parameters()])
    config = load_config(ROOT / "examples" / "mnist.toml")
    dp = DPSGDConfig(noise_multiplier=3.0, max_grad_norm=1.0, sampling_rate=1.0)
    result = train_dp_sgd(
        parts.model,
        x,
        y,
        config=train_config_of(config.task),
        dp=dp,
        rng=deterministic_random(b"tanh"),
    )
    assert result.steps == 1 and result.sampled == 40 and result.num_examples == 40
    after = torch.cat([p.detach().flatten() for p in parts.model.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(after, start)


def test_a_federation_can_choose_mnist_tanh_in_its_task_table() -> None:
    document = load_config(ROOT / "examples" / "mnist.toml").model_dump()
    document["task"]["name"] = "mnist_tanh"
    config = parse_config(document, source="test")
    assert config.task.name == "mnist_tanh"
    assert resolve_task(config.task.name) is mnist_cnn_tanh
