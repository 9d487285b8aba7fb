"""Unit tests of fedshield.training: datasets, CSV sites, tasks and local training."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fedshield.training as training
from fedshield.errors import ConfigError, PayloadError, TaskError
from fedshield.training import (
    ArrayDataset,
    DataSpec,
    TaskContext,
    TaskParts,
    TrainConfig,
    call_task,
    digits_mlp,
    evaluate,
    load_builtin,
    load_weights,
    make_loader,
    mnist_cnn,
    model_weights,
    read_csv_site,
    resolve_task,
    server_test_set,
    site_split,
    train_local,
    write_site_csvs,
)

# ------------------------------------------------------------------------------ surface


def test_public_surface() -> None:
    assert set(training.__all__) == {
        "ArrayDataset",
        "BuiltinName",
        "DataSpec",
        "DatasetName",
        "EvalResult",
        "PartitionName",
        "TaskContext",
        "TaskFactory",
        "TaskParts",
        "TrainConfig",
        "TrainResult",
        "breast_cancer_mlp",
        "call_task",
        "digits_mlp",
        "dirichlet",
        "evaluate",
        "iid",
        "load_builtin",
        "load_weights",
        "make_loader",
        "mnist_cnn",
        "model_weights",
        "partition",
        "read_csv_site",
        "resolve_task",
        "server_test_set",
        "shards",
        "site_split",
        "train_local",
        "write_site_csvs",
    }
    for name in training.__all__:
        assert hasattr(training, name)


# ----------------------------------------------------------------------------- datasets


def test_load_builtin_shapes_and_ranges() -> None:
    digits = load_builtin("digits")
    assert digits.x.shape == (1797, 64) and digits.x.dtype == np.float32
    assert digits.y.dtype == np.int64 and digits.num_classes == 10
    assert 0.0 <= digits.x.min() and digits.x.max() <= 1.0
    cancer = load_builtin("breast_cancer")
    assert cancer.x.shape == (569, 30) and cancer.num_classes == 2
    assert cancer.x.max() > 100.0  # raw, standardized per site later
    digits.x[:] = -1.0  # a copy: the cache is unaffected
    assert load_builtin("digits").x.min() >= 0.0


def _row_keys(d: ArrayDataset) -> set[bytes]:
    return {row.tobytes() for row in d.x}


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_site_splits_are_disjoint_from_each_other_and_the_server(scheme: str) -> None:
    spec = DataSpec(dataset="digits", partition=scheme, seed=7)  # type: ignore[arg-type]
    server = server_test_set(spec)
    assert server is not None
    assert len(server) == round(1797 * 0.2)
    seen = _row_keys(server)
    total = len(server)
    for i in range(4):
        train, test = site_split(spec, partition_index=i, num_partitions=4)
        assert len(test) >= 1 and len(train) >= 1
        for part in (train, test):
            keys = _row_keys(part)
            assert not keys & seen
            seen |= keys
            total += len(part)
    # digits has a few duplicate images, so compare sample counts, not unique rows.
    assert total == 1797


def test_site_split_is_deterministic_and_seed_dependent() -> None:
    spec = DataSpec(dataset="digits", partition="iid", seed=1)
    a, _ = site_split(spec, partition_index=0, num_partitions=3)
    b, _ = site_split(spec, partition_index=0, num_partitions=3)
    c, _ = site_split(
        DataSpec(dataset="digits", partition="iid", seed=2), partition_index=0, num_partitions=3
    )
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.y, c.y)


def test_breast_cancer_site_is_standardized_with_train_stats() -> None:
    train, test = site_split(
        DataSpec(dataset="breast_cancer", partition="iid"), partition_index=0, num_partitions=2
    )
    assert np.allclose(train.x.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(train.x.std(axis=0), 1.0, atol=1e-3)
    assert abs(float(test.x.mean())) < 0.5


def test_site_split_errors() -> None:
    with pytest.raises(ConfigError, match=r"partition_index must be in \[0, 2\), got 2"):
        site_split(DataSpec(dataset="digits"), partition_index=2, num_partitions=2)
    with pytest.raises(ConfigError, match="read_csv_site"):
        site_split(DataSpec(dataset="csv"), partition_index=0, num_partitions=1)
    with pytest.raises(ConfigError, match="dirichlet_alpha must be > 0, got -1.0"):
        DataSpec(dataset="digits", dirichlet_alpha=-1.0)
    with pytest.raises(ConfigError, match=r"test_fraction must be in \[0, 1\), got 1.0"):
        DataSpec(dataset="digits", test_fraction=1.0)


# ---------------------------------------------------------------------------------- CSV


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_read_csv_site_standardizes_and_splits(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{2 * i},7,{i % 2}" for i in range(20))
    path = _write(tmp_path / "site.csv", "a,b,const,target\n" + rows + "\n")
    train, test = read_csv_site(path, label_column="target", test_fraction=0.25, seed=0)
    assert (len(train), len(test)) == (15, 5)
    assert train.x.shape == (15, 3) and train.num_classes == 2
    assert np.allclose(train.x[:, :2].mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(train.x[:, 2], 0.0)  # zero std is treated as 1


def test_read_csv_names_the_bad_column_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", "age,grade,target\n30,1,0\n41,high,1\n")
    with pytest.raises(ConfigError, match=r"line 3, column 'grade': value 'high' is not a finite"):
        read_csv_site(path, label_column="target", test_fraction=0.2, seed=0)


def test_read_csv_missing_label_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "nolabel.csv", "age,income\n30,1\n")
    with pytest.raises(
        ConfigError, match=r"no label column 'target'; columns are \['age', 'income'\]"
    ):
        read_csv_site(path, label_column="target", test_fraction=0.2, seed=0)


def test_read_csv_missing_empty_and_bad_label(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_csv_site(tmp_path / "nope.csv", label_column="target", test_fraction=0.2, seed=0)
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(ConfigError, match="is empty"):
        read_csv_site(empty, label_column="target", test_fraction=0.2, seed=0)
    header_only = _write(tmp_path / "header.csv", "a,target\n")
    with pytest.raises(ConfigError, match="no data rows"):
        read_csv_site(header_only, label_column="target", test_fraction=0.2, seed=0)
    bad_label = _write(tmp_path / "label.csv", "a,target\n1,0\n2,1.5\n")
    with pytest.raises(ConfigError, match="line 3.*not a non-negative integer"):
        read_csv_site(bad_label, label_column="target", test_fraction=0.2, seed=0)
    ragged = _write(tmp_path / "ragged.csv", "a,target\n1,0\n2\n")
    with pytest.raises(ConfigError, match="line 3: 1 values, header has 2"):
        read_csv_site(ragged, label_column="target", test_fraction=0.2, seed=0)


def test_write_site_csvs_round_trip(tmp_path: Path) -> None:
    paths = write_site_csvs(tmp_path / "sites", dataset="breast_cancer", names=["a", "b", "c"])
    assert set(paths) == {"a", "b", "c", "server_test"}
    header = paths["a"].read_text().splitlines()[0].split(",")
    assert header[0] == "mean_radius" and header[-1] == "target" and len(header) == 31
    sizes = 0
    for name in "abc":
        train, test = read_csv_site(paths[name], label_column="target", test_fraction=0.2, seed=0)
        assert train.x.shape[1] == 30
        sizes += len(train) + len(test)
    spec = DataSpec(dataset="csv", server_csv_path=str(paths["server_test"]))
    server = server_test_set(spec)
    assert server is not None
    assert sizes + len(server) == 569
    assert server_test_set(DataSpec(dataset="csv")) is None
    with pytest.raises(ConfigError, match="unique"):
        write_site_csvs(tmp_path, dataset="breast_cancer", names=["a", "a"])
    with pytest.raises(ConfigError, match="file name"):
        write_site_csvs(tmp_path, dataset="breast_cancer", names=["../evil"])


def test_csv_participant_task(tmp_path: Path) -> None:
    paths = write_site_csvs(tmp_path, dataset="breast_cancer", names=["a", "b"], partition="iid")
    data = DataSpec(
        dataset="csv", csv_path=str(paths["a"]), server_csv_path=str(paths["server_test"])
    )
    parts = call_task(resolve_task("breast_cancer"), _ctx(data, role="participant"))
    assert parts.train_loader is not None and parts.test_loader is not None
    result = train_local(
        parts.model, parts.train_loader, config=TrainConfig(local_epochs=3), generator_seed=0
    )
    assert result.num_examples > 0 and np.isfinite(result.mean_loss)
    server = call_task(resolve_task("breast_cancer"), _ctx(data, role="coordinator"))
    assert server.train_loader is None and server.test_loader is not None
    assert evaluate(parts.model, server.test_loader).accuracy > 0.8


# -------------------------------------------------------------------------------- tasks


def _ctx(
    data: DataSpec,
    *,
    role: str = "participant",
    index: int = 0,
    num_partitions: int = 1,
    seed: int = 0,
) -> TaskContext:
    return TaskContext(
        role=role,  # type: ignore[arg-type]
        name=f"site-{index}",
        partition_index=index,
        num_partitions=num_partitions,
        data=data,
        seed=seed,
    )


def test_same_seed_gives_identical_initial_weights() -> None:
    data = DataSpec(dataset="digits", partition="iid")
    state = torch.random.get_rng_state()
    a = model_weights(digits_mlp(_ctx(data, index=0, num_partitions=2, seed=5)).model)
    b = model_weights(digits_mlp(_ctx(data, role="coordinator", num_partitions=2, seed=5)).model)
    c = model_weights(digits_mlp(_ctx(data, index=1, num_partitions=2, seed=6)).model)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG state was touched"
    assert list(a) == sorted(a) and all(v.dtype == np.float32 for v in a.values())
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not all(np.array_equal(a[n], c[n]) for n in a)


def test_mnist_cnn_is_small_and_runs() -> None:
    parts = mnist_cnn(_ctx(DataSpec(dataset="mnist"), role="coordinator"))
    assert sum(p.numel() for p in parts.model.parameters()) < 100_000
    assert parts.test_loader is not None
    x, y = next(iter(parts.test_loader))
    assert x.shape[1:] == (1, 28, 28) and parts.model(x).shape == (x.shape[0], 10)


def test_task_rejects_mismatched_dataset() -> None:
    with pytest.raises(TaskError, match=r"needs features of shape \(64,\)"):
        digits_mlp(_ctx(DataSpec(dataset="breast_cancer")))


def test_train_loader_shuffle_is_seeded() -> None:
    data = DataSpec(dataset="digits", partition="iid")

    def first_labels(seed: int) -> list[int]:
        loader = digits_mlp(_ctx(data, seed=seed)).train_loader
        assert loader is not None
        return [int(v) for v in next(iter(loader))[1]]

    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nonsense", "neither a built-in task"),
        ("a.b:c:d", "neither a built-in task"),
        ("mod:", "neither a built-in task"),
        ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
        ("fedshield.training.tasks:no_such_factory", "has no attribute 'no_such_factory'"),
        ("fedshield.training.tasks:__all__", "is a list, not a callable"),
    ],
)
def test_resolve_task_rejects_bad_names(name: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        resolve_task(name)


def test_resolve_task_aliases_and_user_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_task("digits") is digits_mlp
    assert resolve_task("fedshield.training.tasks:mnist_cnn") is mnist_cnn
    (tmp_path / "user_task_mod.py").write_text(
        "def ok(ctx):\n    return 42\n\ndef boom(ctx):\n    raise ValueError('bad data')\n"
    )
    (tmp_path / "broken_task_mod.py").write_text("raise RuntimeError('oops at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        factory = resolve_task("user_task_mod:ok")
        ctx = _ctx(DataSpec(dataset="digits"))
        with pytest.raises(TaskError, match="user_task_mod:ok returned int, expected TaskParts"):
            call_task(factory, ctx)
        with pytest.raises(TaskError, match="raised ValueError: bad data"):
            call_task(resolve_task("user_task_mod:boom"), ctx)
        with pytest.raises(TaskError, match="RuntimeError: oops at import"):
            resolve_task("broken_task_mod:f")
    finally:
        sys.modules.pop("user_task_mod", None)
        sys.modules.pop("broken_task_mod", None)


def test_weights_round_trip_and_strict_loading() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    weights = model_weights(model)
    assert "1.num_batches_tracked" not in weights
    weights["0.weight"] += 1.0  # a copy: the model is unchanged until loaded
    assert not np.array_equal(model_weights(model)["0.weight"], weights["0.weight"])
    load_weights(model, weights)
    assert np.array_equal(model_weights(model)["0.weight"], weights["0.weight"])
    with pytest.raises(PayloadError, match=r"missing \['0.bias'\]"):
        load_weights(model, {n: w for n, w in weights.items() if n != "0.bias"})
    with pytest.raises(PayloadError, match="'0.weight' has shape"):
        load_weights(model, {**weights, "0.weight": np.zeros((3, 2), np.float32)})


# ---------------------------------------------------------------------- local training


def test_train_config_validation() -> None:
    with pytest.raises(ConfigError, match="learning_rate must be > 0, got -1.0"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ConfigError, match="local_epochs must be >= 1, got 0"):
        TrainConfig(local_epochs=0)
    with pytest.raises(ConfigError, match="proximal_mu must be >= 0"):
        TrainConfig(proximal_mu=-0.1)


def test_digits_single_site_learns() -> None:
    data = DataSpec(dataset="digits", partition="iid", seed=0)
    parts = digits_mlp(_ctx(data))
    assert parts.train_loader is not None and parts.test_loader is not None
    before = evaluate(parts.model, parts.test_loader)
    result = train_local(
        parts.model, parts.train_loader, config=TrainConfig(local_epochs=5), generator_seed=0
    )
    after = evaluate(parts.model, parts.test_loader)
    assert result.steps == 5 * len(parts.train_loader)
    assert result.num_examples == len(parts.train_loader.dataset)  # type: ignore[arg-type]
    assert after.accuracy > 0.8 > before.accuracy
    assert after.loss < before.loss
    assert after.num_examples == len(parts.test_loader.dataset)  # type: ignore[arg-type]


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[n] - b[n]) ** 2).sum() for n in a)))


def test_fedprox_with_large_mu_stays_near_the_start() -> None:
    data = DataSpec(dataset="digits", partition="iid")
    start_parts = digits_mlp(_ctx(data))
    start = model_weights(start_parts.model)
    assert start_parts.train_loader is not None
    moved = {}
    for mu in (0.0, 10.0):
        parts = digits_mlp(_ctx(data))
        assert parts.train_loader is not None
        config = TrainConfig(local_epochs=2, learning_rate=0.05, momentum=0.0, proximal_mu=mu)
        train_local(parts.model, parts.train_loader, config=config, generator_seed=0)
        moved[mu] = _distance(model_weights(parts.model), start)
    assert moved[10.0] < 0.5 * moved[0.0]


def test_max_steps_and_non_finite_loss() -> None:
    data = DataSpec(dataset="digits", partition="iid", batch_size=8)
    parts = digits_mlp(_ctx(data))
    assert parts.train_loader is not None
    result = train_local(
        parts.model, parts.train_loader, config=TrainConfig(max_steps=3), generator_seed=0
    )
    assert (result.steps, result.num_examples) == (3, 24)
    with pytest.raises(TaskError, match="Lower the learning rate|became"):
        train_local(
            parts.model,
            parts.train_loader,
            config=TrainConfig(learning_rate=1e30, momentum=0.0),
            generator_seed=0,
        )


def test_empty_loaders() -> None:
    empty = ArrayDataset(x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64), num_classes=10)
    model = digits_mlp(_ctx(DataSpec(dataset="digits"), role="coordinator")).model
    assert evaluate(model, make_loader(empty, batch_size=4, shuffle_seed=None)).num_examples == 0
    with pytest.raises(TaskError, match="no batches"):
        train_local(
            model,
            make_loader(empty, batch_size=4, shuffle_seed=None),
            config=TrainConfig(),
            generator_seed=0,
        )


def test_call_task_accepts_builtin_parts() -> None:
    parts = call_task(digits_mlp, _ctx(DataSpec(dataset="digits")))
    assert isinstance(parts, TaskParts)
