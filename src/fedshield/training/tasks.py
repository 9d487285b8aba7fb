"""Training tasks: a model plus its data loaders, built the same way in every process.

A task is a factory ``TaskContext -> TaskParts``. The context says who is asking
(a participant with its partition index, or the coordinator) and where the data is;
the factory returns a freshly initialised model and the loaders that role needs.
Because model weights are initialised from ``ctx.seed`` alone, every process of a
federation starts from identical weights without shipping them.

Built-in tasks are :func:`digits_mlp`, :func:`mnist_cnn`, :func:`mnist_cnn_tanh` and
:func:`breast_cancer_mlp`. A user task is named ``"package.module:factory"`` and
loaded by :func:`resolve_task`; importing it runs the user's code, so only name tasks
you trust. :func:`call_task` is the boundary where a misbehaving factory becomes a
:class:`~fedshield.errors.TaskError`.

:func:`model_weights` and :func:`load_weights` move a model's federated tensors
(its floating-point ``state_dict`` entries) to and from numpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.errors import ConfigError, FedshieldError, PayloadError, TaskError
from fedshield.tensors import Weights
from fedshield.training.datasets import (
    ArrayDataset,
    DataSpec,
    read_csv_site,
    server_test_set,
    site_split,
)

__all__ = [
    "TaskContext",
    "TaskFactory",
    "TaskParts",
    "breast_cancer_mlp",
    "call_task",
    "digits_mlp",
    "load_weights",
    "make_loader",
    "mnist_cnn",
    "mnist_cnn_tanh",
    "model_weights",
    "resolve_task",
]


@dataclass(frozen=True)
class TaskContext:
    """What a task factory is told about the process asking for it.

    Attributes
    ----------
    role : {"participant", "coordinator"}
        Participants get a training and a held-out loader; the coordinator gets only a
        test loader (its server test set, if any).
    name : str
        The participant's (or coordinator's) name.
    partition_index : int
        The participant's partition of a built-in dataset, in
        ``[0, num_partitions)``; ignored for the coordinator.
    num_partitions : int
        Number of participants a built-in dataset is divided among (>= 1).
    data : DataSpec
        Where the data comes from.
    seed : int
        Seed (>= 0) of the model initialisation and the training shuffle.
    """

    role: Literal["participant", "coordinator"]
    name: str
    partition_index: int
    num_partitions: int
    data: DataSpec
    seed: int

    def __post_init__(self) -> None:
        """Validate role, indices and seed."""
        if self.role not in ("participant", "coordinator"):
            raise ConfigError(f"role must be 'participant' or 'coordinator', got {self.role!r}")
        if self.num_partitions < 1:
            raise ConfigError(f"num_partitions must be >= 1, got {self.num_partitions}")
        if self.role == "participant" and not 0 <= self.partition_index < self.num_partitions:
            raise ConfigError(
                f"partition_index must be in [0, {self.num_partitions}), got {self.partition_index}"
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass
class TaskParts:
    """A model and the loaders one role uses with it.

    Attributes
    ----------
    model : nn.Module
        The freshly initialised model.
    train_loader : DataLoader or None
        Yields ``(x, y)`` batches, shuffled; None for the coordinator.
    test_loader : DataLoader or None
        Yields ``(x, y)`` batches in a fixed order; None if there is no test data.
    """

    model: nn.Module
    train_loader: DataLoader[Any] | None
    test_loader: DataLoader[Any] | None


TaskFactory = Callable[[TaskContext], TaskParts]


def make_loader(
    data: ArrayDataset, *, batch_size: int, shuffle_seed: int | None
) -> DataLoader[Any]:
    """Wrap ``data`` in a loader yielding ``(float32 x, int64 y)`` batches.

    Parameters
    ----------
    data : ArrayDataset
        The samples.
    batch_size : int
        Samples per batch (the last one may be smaller).
    shuffle_seed : int or None
        Seed of a private ``torch.Generator`` that reshuffles every epoch; None keeps
        the stored order (for evaluation).

    Returns
    -------
    DataLoader
        A single-process loader; it never touches the global torch RNG.
    """
    tensors = TensorDataset(torch.from_numpy(data.x.copy()), torch.from_numpy(data.y.copy()))
    if shuffle_seed is None:
        return DataLoader(tensors, batch_size=batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(tensors, batch_size=batch_size, shuffle=True, generator=generator)


def _shuffle_seed(seed: int, partition_index: int) -> int:
    state = np.random.SeedSequence([seed, 2, partition_index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _init_model(build: Callable[[], nn.Module], *, seed: int) -> nn.Module:
    """Build a model with weights drawn from ``seed``, leaving global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _site_data(ctx: TaskContext) -> tuple[ArrayDataset, ArrayDataset]:
    spec = ctx.data
    if spec.dataset == "csv":
        if spec.csv_path is None:
            raise ConfigError(
                f"participant {ctx.name!r} uses dataset 'csv' but data.csv_path is not set"
            )
        return read_csv_site(
            spec.csv_path,
            label_column=spec.label_column,
            test_fraction=spec.test_fraction,
            seed=spec.seed,
            masking=spec.masking,
        )
    return site_split(spec, partition_index=ctx.partition_index, num_partitions=ctx.num_partitions)


def _check_shape(data: ArrayDataset, *, task: str, feature_shape: tuple[int, ...]) -> None:
    if tuple(data.x.shape[1:]) != feature_shape:
        raise TaskError(
            f"task {task} needs features of shape {feature_shape}, "
            f"the data has {tuple(data.x.shape[1:])}",
            hint="Pick the task that matches the dataset "
            "(digits; mnist or mnist_tanh; breast_cancer).",
        )


def _build_parts(
    ctx: TaskContext,
    *,
    task: str,
    build: Callable[[], nn.Module],
    feature_shape: tuple[int, ...],
) -> TaskParts:
    model = _init_model(build, seed=ctx.seed)
    batch_size = ctx.data.batch_size
    if ctx.role == "coordinator":
        test = server_test_set(ctx.data)
        if test is None:
            return TaskParts(model=model, train_loader=None, test_loader=None)
        _check_shape(test, task=task, feature_shape=feature_shape)
        return TaskParts(
            model=model,
            train_loader=None,
            test_loader=make_loader(test, batch_size=batch_size, shuffle_seed=None),
        )
    train, held_out = _site_data(ctx)
    _check_shape(train, task=task, feature_shape=feature_shape)
    return TaskParts(
        model=model,
        train_loader=make_loader(
            train,
            batch_size=batch_size,
            shuffle_seed=_shuffle_seed(ctx.seed, ctx.partition_index),
        ),
        test_loader=make_loader(held_out, batch_size=batch_size, shuffle_seed=None),
    )


def _digits_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _mnist_model(activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=5),
        activation(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=5),
        activation(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def _mnist_tanh_model() -> nn.Module:
    return _mnist_model(nn.Tanh)


def _breast_cancer_model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))


def digits_mlp(ctx: TaskContext) -> TaskParts:
    """Build the digits task: an MLP 64 -> 64 (ReLU) -> 10 on 8x8 images.

    Parameters
    ----------
    ctx : TaskContext
        Role, partition and data; ``ctx.data.dataset`` should be ``"digits"`` (or a CSV
        with 64 feature columns).

    Returns
    -------
    TaskParts
        Model initialised from ``ctx.seed`` and the role's loaders.

    Raises
    ------
    TaskError
        If the data does not have 64 features.
    ConfigError
        If the data cannot be loaded or split.
    """
    return _build_parts(ctx, task="digits_mlp", build=_digits_model, feature_shape=(64,))


def mnist_cnn(ctx: TaskContext) -> TaskParts:
    """Build the MNIST task: a small CNN (18,378 parameters) on 1x28x28 images.

    Two 5x5 convolutions (16 and 32 channels) with ReLU and 2x2 max-pooling, then a
    linear layer 512 -> 10.

    Parameters
    ----------
    ctx : TaskContext
        Role, partition and data; ``ctx.data.dataset`` should be ``"mnist"``.

    Returns
    -------
    TaskParts
        Model initialised from ``ctx.seed`` and the role's loaders.

    Raises
    ------
    TaskError
        If the data is not shaped ``(n, 1, 28, 28)``.
    ConfigError
        If the data cannot be loaded or split.
    """
    return _build_parts(ctx, task="mnist_cnn", build=_mnist_model, feature_shape=(1, 28, 28))


def mnist_cnn_tanh(ctx: TaskContext) -> TaskParts:
    """Build the MNIST task for DP-SGD: :func:`mnist_cnn`'s CNN with tanh instead of ReLU.

    The same layers and parameter count (18,378); only the activation differs. Bounded
    ("tempered") activations keep the activations, and so the per-record gradients, from
    growing during training, so clipping them to ``max_grad_norm`` throws less of them
    away (Papernot et al., 2021, "Tempered Sigmoid Activations for Deep Learning with
    Differential Privacy", AAAI). Choose it with ``[task] name = "mnist_tanh"`` when
    the sites train with sample-level DP (``benchmarks/dp_utility.py`` measures both).

    Parameters
    ----------
    ctx : TaskContext
        Role, partition and data; ``ctx.data.dataset`` should be ``"mnist"``.

    Returns
    -------
    TaskParts
        Model initialised from ``ctx.seed`` and the role's loaders.

    Raises
    ------
    TaskError
        If the data is not shaped ``(n, 1, 28, 28)``.
    ConfigError
        If the data cannot be loaded or split.
    """
    return _build_parts(
        ctx, task="mnist_cnn_tanh", build=_mnist_tanh_model, feature_shape=(1, 28, 28)
    )


def breast_cancer_mlp(ctx: TaskContext) -> TaskParts:
    """Build the breast-cancer task: an MLP 30 -> 16 (ReLU) -> 2 on standardized features.

    Parameters
    ----------
    ctx : TaskContext
        Role, partition and data; ``ctx.data.dataset`` should be ``"breast_cancer"`` or
        ``"csv"`` with the 30 breast-cancer features (see ``write_site_csvs``).

    Returns
    -------
    TaskParts
        Model initialised from ``ctx.seed`` and the role's loaders.

    Raises
    ------
    TaskError
        If the data does not have 30 features.
    ConfigError
        If the data cannot be loaded or split.
    """
    return _build_parts(
        ctx, task="breast_cancer_mlp", build=_breast_cancer_model, feature_shape=(30,)
    )


_ALIASES: dict[str, TaskFactory] = {
    "digits": digits_mlp,
    "mnist": mnist_cnn,
    "mnist_tanh": mnist_cnn_tanh,
    "breast_cancer": breast_cancer_mlp,
}


def resolve_task(name: str) -> TaskFactory:
    """Return the task factory called ``name``.

    Parameters
    ----------
    name : str
        ``"digits"``, ``"mnist"``, ``"mnist_tanh"``, ``"breast_cancer"``, or
        ``"package.module:factory"``
        for a user task (``factory`` may be a dotted attribute path). Importing a user
        module runs its code.

    Returns
    -------
    TaskFactory
        The callable.

    Raises
    ------
    TaskError
        If ``name`` is not of the form ``module:attribute``, the module cannot be
        imported, the attribute does not exist or is not callable.
    """
    if name in _ALIASES:
        return _ALIASES[name]
    module_name, sep, attr_path = name.partition(":")
    if (
        not sep
        or ":" in attr_path
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in attr_path.split("."))
    ):
        raise TaskError(
            f"task {name!r} is neither a built-in task ({', '.join(sorted(_ALIASES))}) "
            "nor of the form 'package.module:factory'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error in user code at import time is a task error
        raise TaskError(
            f"task {name!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
            hint="Check that the module is on PYTHONPATH and imports cleanly.",
        ) from exc
    target: object = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise TaskError(f"task {name!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TaskError(
            f"task {name!r}: {attr_path!r} is a {type(target).__name__}, not a callable factory"
        )
    factory: TaskFactory = target
    return factory


def _factory_name(factory: object) -> str:
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None) or type(factory).__qualname__
    return f"{module}:{qualname}" if module else str(qualname)


def call_task(factory: TaskFactory, ctx: TaskContext) -> TaskParts:
    """Call ``factory(ctx)`` and check that it returned usable :class:`TaskParts`.

    Parameters
    ----------
    factory : TaskFactory
        The task factory.
    ctx : TaskContext
        Passed to the factory.

    Returns
    -------
    TaskParts
        What the factory returned.

    Raises
    ------
    TaskError
        If the factory raised an exception that is not a fedshield error, returned
        something other than ``TaskParts``, or a ``TaskParts`` whose model is not an
        ``nn.Module`` or whose loaders are not ``DataLoader`` or None.
    """
    label = _factory_name(factory)
    try:
        parts: object = factory(ctx)
    except FedshieldError:
        raise
    except Exception as exc:  # the boundary where user code's errors are translated
        raise TaskError(f"task factory {label} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(parts, TaskParts):
        raise TaskError(f"task factory {label} returned {type(parts).__name__}, expected TaskParts")
    if not isinstance(parts.model, nn.Module):
        raise TaskError(
            f"task factory {label} returned a model of type {type(parts.model).__name__}, "
            "expected torch.nn.Module"
        )
    for field in ("train_loader", "test_loader"):
        loader = getattr(parts, field)
        if loader is not None and not isinstance(loader, DataLoader):
            raise TaskError(
                f"task factory {label} returned {field} of type {type(loader).__name__}, "
                "expected torch.utils.data.DataLoader or None"
            )
    return parts


def model_weights(model: nn.Module) -> Weights:
    """Return copies of ``model``'s floating-point state as float32 numpy arrays.

    Parameters
    ----------
    model : nn.Module
        Any model; integer buffers (e.g. ``num_batches_tracked``) are skipped.

    Returns
    -------
    Weights
        Name -> float32 array, names sorted; the arrays do not share memory with the
        model.
    """
    state = model.state_dict()
    return {
        name: state[name].detach().cpu().to(torch.float32).numpy().copy()
        for name in sorted(state)
        if state[name].is_floating_point()
    }


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` into ``model``'s floating-point tensors, in place.

    Parameters
    ----------
    model : nn.Module
        The model to update.
    weights : Mapping of str to np.ndarray
        Exactly the names of :func:`model_weights` with the same shapes.

    Raises
    ------
    PayloadError
        If names or shapes differ from the model's; the model is left unchanged.
    """
    state = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    if set(state) != set(weights):
        missing = sorted(set(state) - set(weights))[:3]
        extra = sorted(set(weights) - set(state))[:3]
        raise PayloadError(f"weights do not match the model: missing {missing}, unexpected {extra}")
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != tuple(tensor.shape):
            raise PayloadError(
                f"tensor {name!r} has shape {tuple(arr.shape)}, "
                f"the model needs {tuple(tensor.shape)}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise PayloadError(f"tensor {name!r} has dtype {arr.dtype}, expected float")
        arrays[name] = arr
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(arrays[name])))
