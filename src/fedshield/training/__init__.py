"""Models, data and local training for fedshield participants.

* :mod:`~fedshield.training.partition` -- split a dataset among simulated participants
  (IID, Dirichlet label skew, McMahan shards);
* :mod:`~fedshield.training.datasets` -- embedded datasets (digits, MNIST 5k, breast
  cancer), per-site splits and participants' own CSV files;
* :mod:`~fedshield.training.tasks` -- task factories (model + loaders), user tasks
  loaded from ``"package.module:factory"``, weights to and from numpy;
* :mod:`~fedshield.training.local` -- local SGD (FedAvg / FedProx) and evaluation.

Only this package imports torch among the core packages.
"""

from __future__ import annotations

from fedshield.training.datasets import (
    ArrayDataset,
    BuiltinName,
    DatasetName,
    DataSpec,
    load_builtin,
    read_csv_site,
    server_test_set,
    site_split,
    write_site_csvs,
)
from fedshield.training.local import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    train_local,
)
from fedshield.training.partition import (
    PartitionName,
    dirichlet,
    iid,
    partition,
    shards,
)
from fedshield.training.tasks import (
    TaskContext,
    TaskFactory,
    TaskParts,
    breast_cancer_mlp,
    call_task,
    digits_mlp,
    load_weights,
    make_loader,
    mnist_cnn,
    model_weights,
    resolve_task,
)

__all__ = [
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
]
