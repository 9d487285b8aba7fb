"""DP-SGD (sample-level DP) and the CSPRNG Gaussian noise it draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fedshield.errors import ConfigError, TaskError
from fedshield.privacy.noise import gaussian, standard_normal
from fedshield.secagg.randomness import deterministic_random
from fedshield.training.dpsgd import DPSGDConfig, dataset_tensors, train_dp_sgd
from fedshield.training.local import TrainConfig

PLAIN = TrainConfig(local_epochs=1, learning_rate=0.5, momentum=0.0)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _records(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_standard_normal_is_normal() -> None:
    draws = standard_normal(deterministic_random(b"normal"), 20_001)
    assert draws.shape == (20_001,) and draws.dtype == np.float64
    assert abs(draws.mean()) < 0.03 and abs(draws.std() - 1.0) < 0.02
    assert stats.kstest(draws, "norm").pvalue > 1e-3


def test_gaussian_scales_and_validates() -> None:
    rng = deterministic_random(b"scale")
    assert abs(gaussian(rng, 50_000, std=3.0).std() - 3.0) < 0.05
    assert gaussian(rng, 0, std=1.0).shape == (0,)
    for bad in (-1.0, math.nan, math.inf, True):
        with pytest.raises(ConfigError, match="noise std"):
            gaussian(rng, 3, std=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="noise size"):
        standard_normal(rng, -1)


def test_without_noise_or_clipping_one_step_is_full_batch_sgd() -> None:
    x, y = _records()
    model, reference = _model(), _model()
    dp = DPSGDConfig(noise_multiplier=1e-12, max_grad_norm=1e3, sampling_rate=1.0)
    result = train_dp_sgd(model, x, y, config=PLAIN, dp=dp, rng=deterministic_random(b"a"))
    assert result.steps == 1 and result.sampled == 40 and result.num_examples == 40
    loss = nn.functional.cross_entropy(reference(x), y)  # the mean over all 40 records
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            assert p.grad is not None
            p -= PLAIN.learning_rate * p.grad
    assert torch.allclose(_flat(model), _flat(reference), atol=1e-6)


def test_every_record_is_clipped_to_the_norm() -> None:
    x, y = _records(n=1)
    x = x * 100  # one record with a large gradient
    before = _model()
    start = _flat(before)
    dp = DPSGDConfig(noise_multiplier=1e-12, max_grad_norm=0.01, sampling_rate=1.0)
    config = TrainConfig(local_epochs=1, learning_rate=1.0, momentum=0.0)
    train_dp_sgd(before, x, y, config=config, dp=dp, rng=deterministic_random(b"c"))
    step = float(torch.linalg.vector_norm(_flat(before) - start))
    assert step == pytest.approx(0.01, rel=1e-4)  # the gradient was far above C: exactly C

    x, y = _records(n=30)
    model = _model()
    start = _flat(model)
    train_dp_sgd(model, x * 100, y, config=config, dp=dp, rng=deterministic_random(b"d"))
    # The mean of 30 vectors of norm <= C has norm <= C.
    assert float(torch.linalg.vector_norm(_flat(model) - start)) <= 0.01 * (1 + 1e-5)


def test_the_noise_std_is_sigma_times_c_over_the_expected_batch() -> None:
    # Zero inputs and no bias: every per-record gradient is exactly zero, so the step
    # is pure noise: -lr * N(0, (sigma C)^2) / (q N).
    d = 4_000
    model = nn.Linear(d, 3, bias=False)
    nn.init.zeros_(model.weight)
    n, q, sigma, clip = 200, 0.25, 1.3, 0.7
    x, y = torch.zeros(n, d), torch.zeros(n, dtype=torch.long)
    dp = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=clip, sampling_rate=q)
    config = TrainConfig(local_epochs=1, learning_rate=1.0, momentum=0.0, max_steps=1)
    result = train_dp_sgd(model, x, y, config=config, dp=dp, rng=deterministic_random(b"n"))
    assert result.steps == 1
    observed = float(model.weight.detach().double().std())
    assert observed == pytest.approx(sigma * clip / (q * n), rel=0.05)


def test_poisson_batches_average_q_times_n() -> None:
    x, y = _records(n=1_000)
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sampling_rate=0.05)
    assert dp.steps_per_epoch == 20
    config = TrainConfig(local_epochs=1, learning_rate=0.01, momentum=0.0)
    result = train_dp_sgd(_model(), x, y, config=config, dp=dp, rng=deterministic_random(b"p"))
    assert result.steps == 20
    # 20 steps of Binomial(1000, 0.05): mean 1000 in total, std ~ 31.
    assert 850 <= result.sampled <= 1150


def test_the_same_secure_stream_gives_the_same_model() -> None:
    x, y = _records()
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sampling_rate=0.2)
    config = TrainConfig(local_epochs=2, learning_rate=0.1, momentum=0.9, proximal_mu=0.1)
    models = []
    for seed in (b"same", b"same", b"other"):
        model = _model()
        result = train_dp_sgd(model, x, y, config=config, dp=dp, rng=deterministic_random(seed))
        assert result.steps == 10
        models.append(_flat(model))
    assert torch.equal(models[0], models[1]) and not torch.equal(models[0], models[2])


def test_settings_and_models_dp_cannot_protect_are_refused() -> None:
    for kwargs, message in (
        ({"noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
        ({"sampling_rate": 1.5}, "sampling_rate must be <= 1"),
        ({"sampling_rate": math.nan}, "sampling_rate must be a finite number"),
    ):
        settings = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sampling_rate": 0.1}
        with pytest.raises(ConfigError, match=message):
            DPSGDConfig(**{**settings, **kwargs})
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sampling_rate=0.5)
    with pytest.raises(ConfigError, match="BatchNorm"):
        train_dp_sgd(
            nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)),
            *_records(),
            config=PLAIN,
            dp=dp,
            rng=deterministic_random(b"b"),
        )
    with pytest.raises(ConfigError, match="Dropout"):
        train_dp_sgd(
            nn.Sequential(nn.Linear(8, 4), nn.Dropout(0.1)),
            *_records(),
            config=PLAIN,
            dp=dp,
            rng=deterministic_random(b"d"),
        )
    with pytest.raises(TaskError, match="one label each"):
        x, y = _records()
        train_dp_sgd(_model(), x, y[:3], config=PLAIN, dp=dp, rng=deterministic_random(b"e"))


def test_the_mnist_cnn_trains_with_dp_sgd() -> None:
    # Per-record gradients through convolutions and pooling (the mnist task's model).
    from fedshield.training.tasks import _mnist_model

    torch.manual_seed(0)
    model = _mnist_model()
    start = _flat(model)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(24, 1, 28, 28, generator=g), torch.randint(0, 10, (24,), generator=g)
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sampling_rate=0.5)
    result = train_dp_sgd(model, x, y, config=PLAIN, dp=dp, rng=deterministic_random(b"cnn"))
    assert result.steps == 2 and result.num_examples == 24
    after = _flat(model)
    assert torch.isfinite(after).all() and not torch.equal(after, start)


def test_dataset_tensors_reads_every_record_in_order() -> None:
    x, y = _records(n=2_500)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, shuffle=True)
    got_x, got_y = dataset_tensors(loader)
    assert torch.equal(got_x, x) and torch.equal(got_y, y)
