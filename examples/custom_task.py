"""A user task: your own model and data loaders, named in a config as ``custom_task:factory``.

Run it (with ``examples/`` importable):

    PYTHONPATH=examples fedshield simulate examples/custom_task.toml

A real site would load its own records here; this example uses each participant's
digits partition so that it runs anywhere. See docs/tasks.md for the rules.
"""

from __future__ import annotations

import torch
from torch import nn

from fedshield.training.datasets import server_test_set, site_split
from fedshield.training.tasks import TaskContext, TaskParts, make_loader


def factory(ctx: TaskContext) -> TaskParts:
    """Build a wider MLP than the built-in digits task.

    No BatchNorm and no Dropout: sites train with DP-SGD by default, which needs each
    record's own gradient (see docs/tasks.md).
    """
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)  # the same initial weights in every process
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if ctx.role == "coordinator":
        test = server_test_set(ctx.data)
        loader = None if test is None else make_loader(test, batch_size=256, shuffle_seed=None)
        return TaskParts(model=model, train_loader=None, test_loader=loader)
    train, held_out = site_split(
        ctx.data, partition_index=ctx.partition_index, num_partitions=ctx.num_partitions
    )
    return TaskParts(
        model=model,
        train_loader=make_loader(
            train, batch_size=ctx.data.batch_size, shuffle_seed=ctx.seed + ctx.partition_index
        ),
        test_loader=make_loader(held_out, batch_size=256, shuffle_seed=None),
    )
