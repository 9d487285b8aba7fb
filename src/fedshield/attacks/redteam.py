"""The red-team runner: every attack against every defence, each cell a simulated federation.

:func:`run_redteam` fills the matrix attacks x defences. A cell is one complete
in-process federation (:func:`fedshield.federation.simulation.run_simulation`: the real
coordinator, round machine, registry and, in group-wise mode, SecAgg+) in which the
first ``ceil(fraction * N)`` participants of a seeded random order are malicious, and
the coordinator aggregates with one robust rule. Row ``"none"`` is the clean run of each
defence: the accuracy drop of a cell is measured against it.

How an attacker acts (see :data:`ATTACK_PLANS`; every knob can be overridden):

* model poisoning (``sign_flip``, ``gaussian_noise``, ``scaling``, ``alie``, ``ipm``,
  ``min_max``, ``min_sum``): the attackers train honestly, then the simulation's
  ``tamper_updates`` hook replaces their updates by
  :func:`~fedshield.attacks.model_poisoning.craft`, given every honest update of the
  round (the omniscient threat model). With secure aggregation the crafted vectors are
  what the attackers feed into SecAgg+ -- clipped and masked like any other input;
* data poisoning (``label_flip``, ``backdoor``): the ``site_parts`` hook swaps the
  attackers' training data for :func:`~fedshield.attacks.data_poisoning.poison`'s copy,
  and they run the honest training code on it;
* ``sybil`` combines both: the attackers train on label-flipped data and all submit the
  first one's update (Fung et al.'s sybils repeat one *poisoned* update; copies of an
  honest update would be no attack).

The defence is the ``[robust]`` rule with ``num_byzantine`` = the number of attackers,
or in group-wise secure mode the number of groups they can spoil, ``min(m, G)``, lowered
to the largest value the rule's assumption allows with ``G`` group means. A defence
with no valid setting is reported as not applicable, with the reason. ``mean`` is the
undefended baseline and always runs with ``num_byzantine = 0``.

Every federation takes all ``N`` participants in every round (``fraction = 1``,
``min_participants = N``) so that the rule sees exactly ``N`` updates (or ``G`` group
means), gives up a round at the first failure (``max_retries = 0``), and has the
trust-score quarantine (``robust.quarantine_after``) and sample-level differential
privacy (``[privacy] mode``) off: a cell measures the rule
alone. A federation that stops (say an attack drives the model to NaN and no honest site
can train) is a successful denial of service: the cell reports the last committed
model's accuracy.

Unlike the rest of :mod:`fedshield.attacks` this module has side effects: it runs
simulations in temporary directories, reads the clock and writes the heatmap. It is
imported only by ``fedshield redteam`` (inside the command) and by tests; like the
whole package, never by the runtime.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from fedshield.attacks.data_poisoning import DATA_ATTACKS, attack_success_rate, poison
from fedshield.attacks.model_poisoning import MODEL_ATTACKS, craft
from fedshield.config import FederationConfig, RobustRule, parse_config
from fedshield.errors import ConfigError, FedshieldError, TaskError
from fedshield.federation.coordinator import data_spec
from fedshield.federation.round import RoundOpened
from fedshield.federation.simulation import SitePartsHook, TamperHook, run_simulation
from fedshield.robust import requirement
from fedshield.storage import BlobStore, Database, ModelRegistry
from fedshield.tensors import Weights
from fedshield.training.datasets import ArrayDataset
from fedshield.training.dpsgd import dataset_tensors
from fedshield.training.tasks import (
    TaskContext,
    TaskParts,
    call_task,
    load_weights,
    make_loader,
    resolve_task,
)

__all__ = [
    "ATTACK_PLANS",
    "CLEAN",
    "DEFAULT_ATTACKS",
    "DEFAULT_DEFENSES",
    "DEFENSES",
    "AttackPlan",
    "Cell",
    "RedTeamReport",
    "RoundView",
    "byzantine_budget",
    "choose_malicious",
    "plot_heatmap",
    "redteam_config",
    "run_redteam",
]

CLEAN = "none"
"""The attack name of the clean baseline row; always run."""

DEFAULT_ATTACKS: tuple[str, ...] = (
    "sign_flip",
    "gaussian_noise",
    "scaling",
    "alie",
    "ipm",
    "min_max",
    "min_sum",
    "label_flip",
    "backdoor",
    "sybil",
)
DEFENSES: tuple[str, ...] = tuple(get_args(RobustRule))
"""Every rule a federation config can name (the ``[robust]`` table)."""
DEFAULT_DEFENSES: tuple[str, ...] = DEFENSES

Status = Literal["ok", "failed", "not_applicable"]

# Arguments the runner itself passes to craft() and poison(), never overridable.
_FIXED = frozenset({"honest", "own", "num_malicious", "rng", "x", "y", "num_classes"})


@dataclass(frozen=True)
class RoundView:
    """What an attacker's parameters may depend on in one fit round.

    Attributes
    ----------
    n_total : int
        Participants whose update this round carries, attackers included.
    num_malicious : int
        Attackers among them (>= 1).
    server_learning_rate : float
        The server optimizer's step (``[server] learning_rate``).
    """

    n_total: int
    num_malicious: int
    server_learning_rate: float


def _no_params(view: RoundView) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class AttackPlan:
    """How the malicious participants carry out one named attack.

    Attributes
    ----------
    model : str or None
        A :data:`~fedshield.attacks.model_poisoning.MODEL_ATTACKS` name applied to the
        attackers' updates, or None.
    model_params : callable
        ``RoundView -> craft() keywords`` (the defaults of this runner).
    data : str or None
        A :data:`~fedshield.attacks.data_poisoning.DATA_ATTACKS` name applied to the
        attackers' training data, or None.
    data_params : mapping
        ``poison()`` keywords.
    tunable : {"model", "data"}
        Which part user overrides go to.
    """

    model: str | None = None
    model_params: Callable[[RoundView], dict[str, Any]] = _no_params
    data: str | None = None
    data_params: Mapping[str, Any] = field(default_factory=dict)
    tunable: Literal["model", "data"] = "model"


_LABEL_FLIP: Mapping[str, Any] = {"mapping": "reverse", "fraction": 1.0}

ATTACK_PLANS: Mapping[str, AttackPlan] = {
    # Boosted by n / k: the attackers' reversed updates outweigh the whole round, as
    # Bagdasaryan et al. boost theirs; Li et al.'s unboosted flip (scale 1) only slows
    # the mean down when attackers are a minority.
    "sign_flip": AttackPlan(
        model="sign_flip",
        model_params=lambda v: {"scale": v.n_total / v.num_malicious},
    ),
    # Blanchard et al. use sigma = 200 on raw gradients; 1.0 per coordinate is already
    # two orders of magnitude above an honest update's norm here and keeps the model
    # finite, so the cell reports an accuracy rather than a NaN.
    "gaussian_noise": AttackPlan(model="gaussian_noise", model_params=lambda v: {"sigma": 1.0}),
    # Model replacement (Bagdasaryan et al.): gamma = n / eta.
    "scaling": AttackPlan(
        model="scaling",
        model_params=lambda v: {"factor": v.n_total / v.server_learning_rate},
    ),
    "alie": AttackPlan(model="alie"),
    "ipm": AttackPlan(model="ipm", model_params=lambda v: {"epsilon": 0.1}),
    "min_max": AttackPlan(model="min_max", model_params=lambda v: {"perturbation": "std"}),
    "min_sum": AttackPlan(model="min_sum", model_params=lambda v: {"perturbation": "std"}),
    "label_flip": AttackPlan(data="label_flip", data_params=_LABEL_FLIP, tunable="data"),
    "backdoor": AttackPlan(
        data="backdoor",
        data_params={"target": 0, "fraction": 0.5, "pattern": "square"},
        tunable="data",
    ),
    "sybil": AttackPlan(model="sybil", data="label_flip", data_params=_LABEL_FLIP, tunable="data"),
}
"""Attack name -> what the attackers do, with this runner's default parameters."""


@dataclass(frozen=True)
class Cell:
    """One attack against one defence.

    Attributes
    ----------
    attack, defense : str
        The row (``"none"`` for the clean run) and the column.
    status : {"ok", "failed", "not_applicable"}
        ``failed``: the federation stopped before its last round (``reason`` says why);
        the accuracy is then the last committed model's. ``not_applicable``: the
        defence has no valid setting here (``reason``); nothing ran.
    num_byzantine : int or None
        The ``f`` the rule was configured with.
    final_accuracy : float or None
        Accuracy of the final model on the global (server) test set, in ``[0, 1]``.
    accuracy_drop : float or None
        The clean run's accuracy with the same defence minus ``final_accuracy``.
    attack_success_rate : float or None
        For backdoor cells (and the clean row when a backdoor runs): the share of
        triggered non-target test images classified as the target.
    rounds_completed : int
        Fit rounds committed.
    wall_s : float
        Seconds the cell took.
    reason : str or None
        Why the cell failed or is not applicable.
    """

    attack: str
    defense: str
    status: Status
    num_byzantine: int | None = None
    final_accuracy: float | None = None
    accuracy_drop: float | None = None
    attack_success_rate: float | None = None
    rounds_completed: int = 0
    wall_s: float = 0.0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the cell as a JSON-able dict (floats rounded to 4 places)."""
        out = dataclasses.asdict(self)
        for key in ("final_accuracy", "accuracy_drop", "attack_success_rate"):
            if out[key] is not None:
                out[key] = round(out[key], 4)
        out["wall_s"] = round(self.wall_s, 2)
        return out


@dataclass(frozen=True)
class RedTeamReport:
    """The settings of a red-team run and its cells (clean row first)."""

    settings: Mapping[str, Any]
    cells: tuple[Cell, ...]

    def cell(self, attack: str, defense: str) -> Cell:
        """Return the cell of ``attack`` against ``defense``."""
        for c in self.cells:
            if (c.attack, c.defense) == (attack, defense):
                return c
        raise KeyError((attack, defense))

    @property
    def attacks(self) -> tuple[str, ...]:
        """The rows, in order (``"none"`` first)."""
        return tuple(dict.fromkeys(c.attack for c in self.cells))

    @property
    def defenses(self) -> tuple[str, ...]:
        """The columns, in order."""
        return tuple(dict.fromkeys(c.defense for c in self.cells))

    def to_json(self) -> dict[str, Any]:
        """Return ``{"settings": ..., "cells": [...]}``."""
        return {"settings": dict(self.settings), "cells": [c.to_json() for c in self.cells]}


# ----------------------------------------------------------------------------- settings


def choose_malicious(names: Sequence[str], *, fraction: float, seed: int) -> tuple[str, ...]:
    """Return the first ``ceil(fraction * N)`` names of a random order seeded by ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"--malicious-fraction must be in [0, 1), got {fraction}",
            hint="For example --malicious-fraction 0.2 (a fifth of the participants).",
        )
    count = math.ceil(round(fraction * len(names), 9))
    order = np.random.default_rng(seed).permutation(len(names))
    return tuple(names[int(i)] for i in order[:count])


def byzantine_budget(defense: str, *, inputs: int, malicious: int, grouped: bool) -> int:
    """Return the ``num_byzantine`` the defence runs with, or raise ConfigError (n/a).

    ``inputs`` is what the rule combines (``N`` updates, or ``G`` group means when
    ``grouped``). ``mean`` always gets 0. Plain: ``f = malicious``, which must meet the
    rule's assumption. Grouped: the attackers spoil at most ``min(malicious, G)``
    groups; ``f`` is that, lowered to the largest value >= 1 the assumption allows.
    """
    if grouped and defense == "foolsgold":
        raise ConfigError(
            "foolsgold needs each participant's update history, which group-wise "
            "secure aggregation hides"
        )
    if defense == "mean" or malicious == 0:
        return 0
    if not grouped:
        requirement(defense, inputs, malicious)
        return malicious
    spoiled = min(malicious, inputs)
    for f in range(spoiled, 0, -1):
        try:
            requirement(defense, inputs, f)
        except ConfigError:
            continue
        return f
    try:
        requirement(defense, inputs, 1)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc.message}; {inputs} group mean(s) cannot tolerate even one spoiled group"
        ) from exc
    raise AssertionError("unreachable: f = 1 met the requirement")  # pragma: no cover


def redteam_config(
    config: FederationConfig, *, secure_groups: int | None = None
) -> tuple[FederationConfig, int | None]:
    """Return the base config of every cell and its number of secure groups (None: plain).

    Everyone takes part in every round; no retries; the ``[robust]`` table is reset.
    ``secure_groups`` G turns on group-wise SecAgg+ with ``min_group_size = N // G``;
    without it the config's own group-wise setting is kept, and otherwise secure
    aggregation is off (a robust rule cannot run over one secure sum).
    """
    data = config.model_dump()
    n = len(config.participants.resolved_names())
    data["rounds"].update(fraction=1.0, per_round=None, min_participants=n, max_retries=0)
    data["robust"].update(rule="mean", num_byzantine=0, params={})
    # Sample-level DP (on by default) adds noise of its own and slows every cell down;
    # the matrix measures the aggregation rule alone, as the reference run did.
    data["privacy"]["mode"] = "off"
    if "quarantine_after" in data["robust"]:
        # Each cell measures the rule alone: a quarantined attacker would also shrink
        # the pool below min_participants = N.
        data["robust"]["quarantine_after"] = None
    secure = data["secure_aggregation"]
    if secure_groups is not None:
        if isinstance(secure_groups, bool) or secure_groups < 1 or n // secure_groups < 2:
            raise ConfigError(
                f"--secure-groups must be between 1 and N // 2 = {n // 2}, got {secure_groups}",
                hint="Every SecAgg+ group needs at least 2 participants.",
            )
        size = n // secure_groups
        if n // size != secure_groups:
            possible = sorted({n // (n // g) for g in range(1, n // 2 + 1)})
            raise ConfigError(
                f"{n} participants in groups of at least {size} make {n // size} groups, "
                f"not {secure_groups}",
                hint=f"Pick one of {', '.join(map(str, possible))} groups.",
            )
        secure.update(enabled=True, min_group_size=size)
    elif not (secure["enabled"] and secure["min_group_size"] is not None):
        secure["enabled"] = False
    cfg = parse_config(data, source="redteam")
    group_size = cfg.secure_aggregation.min_group_size
    groups = n // group_size if cfg.secure_aggregation.enabled and group_size else None
    return cfg, groups


def _with_defense(
    base: FederationConfig, defense: str, num_byzantine: int, params: Mapping[str, float]
) -> FederationConfig:
    data = base.model_dump()
    data["robust"].update(rule=defense, num_byzantine=num_byzantine, params=dict(params))
    return parse_config(data, source=f"redteam defense {defense!r}")


# -------------------------------------------------------------------------------- hooks


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


def _poisoning_hook(
    attack: str,
    params: Mapping[str, Any],
    *,
    malicious: Sequence[str],
    num_classes: int,
    batch_size: int,
    seed: int,
) -> SitePartsHook:
    def site_parts(name: str, parts: TaskParts) -> TaskParts:
        if name not in malicious or parts.train_loader is None:
            return parts
        index = malicious.index(name)
        try:
            tx, ty = dataset_tensors(parts.train_loader)
        except TaskError as exc:
            raise ConfigError("a malicious participant has no training data to poison") from exc
        x, y = tx.numpy(), ty.numpy()
        poisoned = poison(
            attack,
            x=x.astype(np.float32),
            y=y.astype(np.int64),
            num_classes=num_classes,
            rng=np.random.default_rng(_seed_of(seed, 1, index)),
            **params,
        )
        data = ArrayDataset(
            x=np.asarray(poisoned.x, dtype=np.float32),
            y=np.asarray(poisoned.y, dtype=np.int64),
            num_classes=num_classes,
        )
        loader = make_loader(
            data,
            batch_size=parts.train_loader.batch_size or batch_size,
            shuffle_seed=_seed_of(seed, 2, index),
        )
        return dataclasses.replace(parts, train_loader=loader)

    return site_parts


def _crafting_hook(
    attack: str,
    params: Callable[[RoundView], dict[str, Any]],
    *,
    malicious: frozenset[str],
    server_learning_rate: float,
    rng: np.random.Generator,
) -> TamperHook:
    def tamper(opened: RoundOpened, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bad = sorted(n for n in vectors if n in malicious)
        good = sorted(n for n in vectors if n not in malicious)
        if not bad:
            return vectors
        view = RoundView(len(vectors), len(bad), server_learning_rate)
        crafted = craft(
            attack,
            honest=np.stack([vectors[n] for n in good]) if good else None,
            own=np.stack([vectors[n] for n in bad]),
            num_malicious=len(bad),
            rng=rng,
            **params(view),
        )
        out = dict(vectors)
        out.update({n: crafted[i].astype(np.float32) for i, n in enumerate(bad)})
        return out

    return tamper


def _norm_observer(norms: list[float], *, groups: int | None, seed: int) -> TamperHook:
    """Record the L2 norms of what the rule will see; change nothing."""
    rng = np.random.default_rng(seed)

    def observe(opened: RoundOpened, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.stack([vectors[n] for n in sorted(vectors)]).astype(np.float64)
        if groups is not None and groups <= rows.shape[0]:
            # The coordinator sees group means; deal a random order round-robin, as
            # split_groups does.
            order = rng.permutation(rows.shape[0])
            rows = np.stack([rows[order[g::groups]].mean(axis=0) for g in range(groups)])
        norms.extend(float(v) for v in np.linalg.norm(rows, axis=1))
        return vectors

    return observe


# ----------------------------------------------------------------------------- the runner


@dataclass
class _TestSet:
    parts: TaskParts
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    @classmethod
    def of(cls, config: FederationConfig, base_dir: Path) -> _TestSet:
        spec = data_spec(
            config.data,
            seed=config.federation.seed,
            batch_size=config.task.batch_size,
            participant=None,
            base_dir=base_dir,
        )
        ctx = TaskContext(
            role="coordinator",
            name="redteam",
            partition_index=0,
            num_partitions=len(config.participants.resolved_names()),
            data=spec,
            seed=config.federation.seed,
        )
        parts = call_task(resolve_task(config.task.name), ctx)
        if parts.test_loader is None:
            raise ConfigError(
                "the red team measures every cell on the global test set, and this "
                "federation has none",
                hint="Set data.server_test_fraction > 0 (or data.server_csv).",
            )
        xs, ys = [], []
        for x, y in parts.test_loader:
            xs.append(x.numpy())
            ys.append(y.numpy())
        x_all, y_all = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
        with torch.no_grad():
            num_classes = int(parts.model(torch.from_numpy(x_all[:1])).shape[1])
        return cls(parts=parts, x=x_all, y=y_all, num_classes=num_classes)

    def success_rate(self, weights: Weights, *, target: int, pattern: Any) -> float:
        load_weights(self.parts.model, weights)
        model = self.parts.model
        model.eval()

        def predict(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                chunks = [
                    model(torch.from_numpy(np.ascontiguousarray(batch[i : i + 512])))
                    .argmax(dim=1)
                    .numpy()
                    for i in range(0, batch.shape[0], 512)
                ]
            return np.concatenate(chunks)

        return attack_success_rate(predict, self.x, self.y, target=target, pattern=pattern)


def _final_model(workdir: Path) -> tuple[Weights, float | None, int]:
    db = Database.for_workdir(workdir)
    try:
        registry = ModelRegistry(db, BlobStore(workdir / "models"))
        head = registry.head()
        assert head is not None, "the coordinator commits the initial model at start"
        return registry.load(head.version), head.metrics.get("server_accuracy"), head.round or 0
    finally:
        db.close()


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}",
            hint=f"Pass --{kind}s a comma-separated subset of those names.",
        )
    if len(set(names)) != len(names):
        raise ConfigError(
            f"the {kind} list names one twice: {', '.join(names)}",
            hint=f"List each of the --{kind}s once.",
        )
    return tuple(names)


def _check_params(overrides: Mapping[str, Mapping[str, Any]], attacks: Sequence[str]) -> None:
    """Reject overrides for attacks that do not run or keywords the attack lacks."""
    for attack, values in overrides.items():
        if attack not in attacks:
            raise ConfigError(
                f"attack parameters given for {attack!r}, which does not run",
                hint="Add it to --attacks or drop its --attack-param.",
            )
        plan = ATTACK_PLANS[attack]
        name = plan.model if plan.tunable == "model" else plan.data
        assert name is not None
        adapter = MODEL_ATTACKS[name] if plan.tunable == "model" else DATA_ATTACKS[name]
        accepted = set(inspect.signature(adapter).parameters) - _FIXED
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise ConfigError(
                f"{attack} has no parameter {', '.join(unknown)}; "
                f"its parameters: {', '.join(sorted(accepted)) or 'none'}",
                hint="See the attack's docstring in fedshield.attacks, or docs/redteam.md.",
            )


class _Runner:
    def __init__(
        self,
        base: FederationConfig,
        *,
        base_dir: Path,
        malicious: tuple[str, ...],
        seed: int,
        attack_params: Mapping[str, Mapping[str, Any]],
        test: _TestSet,
    ) -> None:
        self.base = base
        self.base_dir = base_dir
        self.malicious = malicious
        self.seed = seed
        self.attack_params = attack_params
        self.test = test

    def data_params(self, attack: str) -> dict[str, Any]:
        plan = ATTACK_PLANS[attack]
        extra = self.attack_params.get(attack, {}) if plan.tunable == "data" else {}
        return {**plan.data_params, **extra}

    def model_params(self, attack: str) -> Callable[[RoundView], dict[str, Any]]:
        plan = ATTACK_PLANS[attack]
        extra = dict(self.attack_params.get(attack, {})) if plan.tunable == "model" else {}
        return lambda view: {**plan.model_params(view), **extra}

    def run(
        self,
        attack: str,
        defense: str,
        config: FederationConfig,
        *,
        num_byzantine: int,
        index: int,
        observer: TamperHook | None = None,
        measure_backdoor: Mapping[str, Any] | None = None,
    ) -> Cell:
        started = time.perf_counter()
        site_parts: SitePartsHook | None = None
        tamper = observer
        if attack != CLEAN and self.malicious:
            plan = ATTACK_PLANS[attack]
            if plan.data is not None:
                site_parts = _poisoning_hook(
                    plan.data,
                    self.data_params(attack),
                    malicious=self.malicious,
                    num_classes=self.test.num_classes,
                    batch_size=config.task.batch_size,
                    seed=self.seed,
                )
            if plan.model is not None:
                tamper = _crafting_hook(
                    plan.model,
                    self.model_params(attack),
                    malicious=frozenset(self.malicious),
                    server_learning_rate=config.server.learning_rate,
                    rng=np.random.default_rng(_seed_of(self.seed, 3, index)),
                )
        status: Status = "ok"
        reason: str | None = None
        with tempfile.TemporaryDirectory(prefix="fedshield-redteam-") as tmp:
            workdir = Path(tmp)
            try:
                run_simulation(
                    config,
                    workdir=workdir,
                    base_dir=self.base_dir,
                    site_parts=site_parts,
                    tamper_updates=tamper,
                )
            except ConfigError:
                raise  # a setup mistake, not an outcome of the attack
            except FedshieldError as exc:
                status, reason = "failed", exc.message
            except ValueError as exc:
                # Not an error fedshield raises on purpose: the attack crashed the
                # coordinator (e.g. storage refusing a NaN server loss). Record it.
                status, reason = "failed", f"coordinator crashed: {type(exc).__name__}: {exc}"
            weights, accuracy, rounds = _final_model(workdir)
        asr = None
        if measure_backdoor is not None:
            asr = self.test.success_rate(
                weights,
                target=int(measure_backdoor["target"]),
                pattern=measure_backdoor.get("pattern", "square"),
            )
        return Cell(
            attack=attack,
            defense=defense,
            status=status,
            num_byzantine=num_byzantine,
            final_accuracy=accuracy,
            attack_success_rate=asr,
            rounds_completed=rounds,
            wall_s=time.perf_counter() - started,
            reason=reason,
        )


def run_redteam(
    config: FederationConfig,
    *,
    base_dir: Path,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    defenses: Sequence[str] = DEFAULT_DEFENSES,
    malicious_fraction: float = 0.2,
    secure_groups: int | None = None,
    seed: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    defense_params: Mapping[str, Mapping[str, float]] | None = None,
    on_cell: Callable[[Cell], None] | None = None,
) -> RedTeamReport:
    """Run every attack against every defence in simulation and return the matrix.

    Parameters
    ----------
    config : FederationConfig
        The federation (participants and rounds already overridden as wanted).
    base_dir : Path
        What the config's relative paths are relative to.
    attacks : sequence of str
        Keys of :data:`ATTACK_PLANS`; ``"none"`` (the clean row) is always run first.
    defenses : sequence of str
        Robust rules (:data:`DEFENSES`).
    malicious_fraction : float
        Share of malicious participants, in ``[0, 1)``; ``ceil(fraction * N)`` of them.
    secure_groups : int or None
        Group-wise SecAgg+ with this many groups (see :func:`redteam_config`).
    seed : int or None
        Chooses the attackers and seeds the attacks; default the federation's seed.
    attack_params : mapping or None
        ``{attack: {keyword: value}}`` overriding :data:`ATTACK_PLANS`' defaults.
    defense_params : mapping or None
        ``{rule: {param: value}}`` for the ``[robust]`` params. ``centered_clipping``'s
        ``tau`` defaults to the median L2 norm of the rule's inputs in the clean
        ``mean`` run (individual updates, or simulated group means).
    on_cell : callable or None
        Called with every finished cell (progress).

    Raises
    ------
    ConfigError
        Unknown attack or defence, a bad fraction, group count or parameter, no global
        test set, or fewer than two honest participants.
    """
    attacks = _check_names("attack", [a for a in attacks if a != CLEAN], tuple(ATTACK_PLANS))
    defenses = _check_names("defense", list(defenses), DEFENSES)
    if not defenses:
        raise ConfigError("no defense to run", hint="Pass --defenses mean,median,...")
    _check_params(attack_params or {}, attacks)
    stray = sorted(set(defense_params or {}) - set(defenses))
    if stray:
        raise ConfigError(
            f"defense parameters given for rules that do not run: {stray}",
            hint="Add the rule to --defenses or drop its --defense-param.",
        )
    base, groups = redteam_config(config, secure_groups=secure_groups)
    names = base.participants.resolved_names()
    seed = base.federation.seed if seed is None else seed
    malicious = choose_malicious(names, fraction=malicious_fraction, seed=seed)
    if malicious and len(names) - len(malicious) < 2:
        raise ConfigError(
            f"{len(malicious)} of {len(names)} participants are malicious; the attacks "
            "need at least 2 honest ones",
            hint="Lower --malicious-fraction or raise --participants.",
        )
    test = _TestSet.of(base, base_dir)
    runner = _Runner(
        base,
        base_dir=base_dir,
        malicious=malicious,
        seed=seed,
        attack_params=attack_params or {},
        test=test,
    )
    backdoor = runner.data_params("backdoor") if "backdoor" in attacks else None
    inputs = groups if groups is not None else len(names)
    params = {rule: dict(p) for rule, p in (defense_params or {}).items()}
    budgets: dict[str, int | str] = {}
    for defense in defenses:
        try:
            budgets[defense] = byzantine_budget(
                defense, inputs=inputs, malicious=len(malicious), grouped=groups is not None
            )
        except ConfigError as exc:
            budgets[defense] = exc.message
    cells: dict[tuple[str, str], Cell] = {}

    def record(cell: Cell) -> None:
        cells[(cell.attack, cell.defense)] = cell
        if on_cell is not None:
            on_cell(cell)

    # The clean mean run first: centered clipping's tau is calibrated on it.
    norms: list[float] = []
    observer: TamperHook | None = None
    clean_order = sorted(defenses, key=lambda d: d != "mean")
    if "centered_clipping" in defenses and "tau" not in params.get("centered_clipping", {}):
        observer = _norm_observer(norms, groups=groups, seed=_seed_of(seed, 4))
        if "mean" not in defenses:
            runner.run(CLEAN, "mean", base, num_byzantine=0, index=0, observer=observer)
            observer = None
    index = 0
    for attack in (CLEAN, *attacks):
        for defense in defenses if attack != CLEAN else clean_order:
            index += 1
            budget = budgets[defense]
            if isinstance(budget, str):
                record(Cell(attack, defense, "not_applicable", reason=budget))
                continue
            if defense == "centered_clipping" and "tau" not in params.get(defense, {}):
                if not norms:
                    raise ConfigError("cannot calibrate centered_clipping's tau: no clean norms")
                params[defense] = {**params.get(defense, {}), "tau": float(np.median(norms))}
            cfg = _with_defense(base, defense, budget, params.get(defense, {}))
            cell = runner.run(
                attack,
                defense,
                cfg,
                num_byzantine=budget,
                index=index,
                observer=observer if (attack, defense) == (CLEAN, "mean") else None,
                measure_backdoor=backdoor if attack in (CLEAN, "backdoor") else None,
            )
            if attack != CLEAN:
                clean = cells[(CLEAN, defense)].final_accuracy
                if clean is not None and cell.final_accuracy is not None:
                    cell = dataclasses.replace(cell, accuracy_drop=clean - cell.final_accuracy)
            record(cell)
    ordered = tuple(cells[(a, d)] for a in (CLEAN, *attacks) for d in defenses)
    settings = _settings(
        base,
        groups=groups,
        malicious=malicious,
        seed=seed,
        fraction=malicious_fraction,
        attacks=attacks,
        defenses=defenses,
        runner=runner,
        defense_params=params,
        budgets=budgets,
    )
    return RedTeamReport(settings=settings, cells=ordered)


def _settings(
    base: FederationConfig,
    *,
    groups: int | None,
    malicious: tuple[str, ...],
    seed: int,
    fraction: float,
    attacks: tuple[str, ...],
    defenses: tuple[str, ...],
    runner: _Runner,
    defense_params: Mapping[str, Mapping[str, float]],
    budgets: Mapping[str, int | str],
) -> dict[str, Any]:
    names = base.participants.resolved_names()
    view = RoundView(len(names), max(len(malicious), 1), base.server.learning_rate)
    described: dict[str, Any] = {}
    for attack in attacks:
        plan = ATTACK_PLANS[attack]
        entry: dict[str, Any] = {}
        if plan.model is not None:
            entry["model"] = {"attack": plan.model, **runner.model_params(attack)(view)}
        if plan.data is not None:
            entry["data"] = {"attack": plan.data, **runner.data_params(attack)}
        described[attack] = entry
    secure = base.secure_aggregation
    return {
        "federation": base.federation.name,
        "task": base.task.name,
        "dataset": base.data.dataset,
        "participants": len(names),
        "rounds": base.rounds.count,
        "local_epochs": base.task.local_epochs,
        "malicious_fraction": fraction,
        "malicious": list(malicious),
        "seed": seed,
        "secure_aggregation": "group-wise" if groups is not None else "off",
        "groups": groups,
        "min_group_size": secure.min_group_size if groups is not None else None,
        "clip_range": secure.clip_range if groups is not None else None,
        "attacks": [CLEAN, *attacks],
        "defenses": list(defenses),
        "attack_params": described,
        "defense_params": {d: dict(p) for d, p in defense_params.items() if d in defenses},
        "num_byzantine": {d: b for d, b in budgets.items() if isinstance(b, int)},
    }


# ------------------------------------------------------------------------------- output


def plot_heatmap(report: RedTeamReport, path: Path) -> None:
    """Write a PNG heatmap of the final accuracy per cell (annotated with drop and ASR).

    Uses matplotlib's Agg canvas directly, so no GUI backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attacks, defenses = report.attacks, report.defenses
    values = np.full((len(attacks), len(defenses)), np.nan)
    labels: list[list[str]] = [["" for _ in defenses] for _ in attacks]
    for i, attack in enumerate(attacks):
        for j, defense in enumerate(defenses):
            cell = report.cell(attack, defense)
            if cell.status == "not_applicable" or cell.final_accuracy is None:
                labels[i][j] = "n/a"
                continue
            values[i, j] = 100.0 * cell.final_accuracy
            text = f"{values[i, j]:.1f}"
            if cell.accuracy_drop is not None:
                text += f"\n{-100.0 * cell.accuracy_drop:+.1f}"
            if cell.attack_success_rate is not None and attack != CLEAN:
                text += f"\nASR {100.0 * cell.attack_success_rate:.0f}%"
            if cell.status == "failed":
                text += "\nstopped"
            labels[i][j] = text
    figure = Figure(figsize=(1.1 * len(defenses) + 3.0, 0.75 * len(attacks) + 2.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    masked = np.ma.masked_invalid(values)
    image = axes.imshow(masked, cmap="RdYlGn", vmin=0.0, vmax=100.0, aspect="auto")
    axes.set_facecolor("#d9d9d9")
    axes.set_xticks(range(len(defenses)), labels=list(defenses), rotation=35, ha="right")
    axes.set_yticks(range(len(attacks)), labels=list(attacks))
    for i in range(len(attacks)):
        for j in range(len(defenses)):
            axes.text(j, i, labels[i][j], ha="center", va="center", fontsize=7)
    settings = report.settings
    axes.set_title(
        f"{settings.get('federation')}: {len(settings.get('malicious', []))} of "
        f"{settings.get('participants')} malicious, {settings.get('rounds')} rounds\n"
        f"secure aggregation {settings.get('secure_aggregation')}",
        fontsize=9,
    )
    figure.colorbar(image, ax=axes, label="final accuracy (%), annotated with the drop")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
