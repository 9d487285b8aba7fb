"""The fedshield error tree.

Every error a user can cause derives from :class:`FedshieldError`, carries a one-line
message that names what was wrong, a hint that says how to fix it, and the exit code the
CLI returns for it. Third-party exceptions are translated into this tree at one boundary
(``raise ... from exc``) so that the CLI never shows a traceback::

    FedshieldError                exit 1
    ├── ConfigError               exit 2   bad TOML, bad key, bad value, bad CLI argument
    ├── IdentityError             exit 3   missing or invalid certificate, key or kit
    ├── StorageError              exit 4   database or blob store unusable
    │   └── NotFoundError         exit 4   no such model version / round / participant
    ├── PayloadError              exit 5   a tensor payload with wrong names, shapes, dtype,
    │                                      NaN/Inf or over the size limit
    ├── ProtocolError             exit 6   a message for the wrong round, stage or role
    ├── TransportError            exit 7   the coordinator could not be reached or refused us
    ├── RoundFailedError          exit 8   a round failed after its retries (reason recorded)
    ├── TaskError                 exit 9   a user task could not be imported or misbehaved
    ├── BudgetExhaustedError      exit 10  a round would take a site over its privacy budget
    ├── AuditError                exit 11  an audit signature, hash, proof or log failed
    └── ComplianceError           exit 12  a required compliance control fails
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "BudgetExhaustedError",
    "ComplianceError",
    "ConfigError",
    "FedshieldError",
    "IdentityError",
    "NotFoundError",
    "PayloadError",
    "ProtocolError",
    "RoundFailedError",
    "StorageError",
    "TaskError",
    "TransportError",
]


class FedshieldError(Exception):
    """Base of every error fedshield raises on purpose."""

    exit_code: int = 1
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ConfigError(FedshieldError):
    """A configuration file or command-line argument is invalid."""

    exit_code = 2
    default_hint = "Fix the named key in the config file (see examples/digits.toml)."


class IdentityError(FedshieldError):
    """A certificate, private key or provisioning kit is missing or invalid."""

    exit_code = 3
    default_hint = "Run `fedshield provision CONFIG --out DIR` and use the kit it writes."


class StorageError(FedshieldError):
    """The database or the blob store cannot be used."""

    exit_code = 4


class NotFoundError(StorageError):
    """A requested record (model version, round, participant) does not exist."""

    default_hint = "List what exists with `fedshield models list --workdir DIR`."


class PayloadError(FedshieldError):
    """A tensor payload was malformed, non-finite, of the wrong shape or too large."""

    exit_code = 5


class ProtocolError(FedshieldError):
    """A message arrived for the wrong federation, round, stage or role."""

    exit_code = 6


class TransportError(FedshieldError):
    """The network peer could not be reached, or refused the request."""

    exit_code = 7
    default_hint = "Check the coordinator address and that it is running."


class RoundFailedError(FedshieldError):
    """A round could not complete after its retries; the reason is recorded."""

    exit_code = 8


class TaskError(FedshieldError):
    """A training task could not be loaded or returned something unusable."""

    exit_code = 9
    default_hint = "A user task is `package.module:factory`; see docs/tasks.md."


class BudgetExhaustedError(FedshieldError):
    """A round would take this participant over its differential privacy budget.

    The participant refuses the round before it trains: nothing is computed on its data
    and nothing leaves the site. The coordinator counts the refusal as a dropout.

    Attributes
    ----------
    spent_epsilon : float
        Epsilon already spent, recomputed from the site's ledger.
    epsilon_after : float
        Epsilon the site would have spent in total had it trained the refused round.
    target_epsilon : float
        The site's budget.
    """

    exit_code = 10
    default_hint = (
        "Raise target_epsilon in participant.toml [privacy] (the site's own decision), "
        "or stop training here: the budget is spent."
    )

    def __init__(
        self,
        message: str,
        *,
        spent_epsilon: float,
        epsilon_after: float,
        target_epsilon: float,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.spent_epsilon = spent_epsilon
        self.epsilon_after = epsilon_after
        self.target_epsilon = target_epsilon


class AuditError(FedshieldError):
    """An audit signature, hash chain, inclusion proof or tree head did not verify.

    Raised opaquely by the primitives (a bad signature says only that). The log verifier
    sets ``seq`` (the first bad entry, ``None`` for the log as a whole) and ``check``
    (``sequence``, ``missing entry``, ``signature``, ``hash``, ``tree head``,
    ``truncated``, ``unchained``) so that an auditor knows where the log broke.
    """

    exit_code = 11
    default_hint = "Treat the log as tampered with; keep the workdir as evidence."

    def __init__(
        self,
        message: str,
        *,
        seq: int | None = None,
        check: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.seq = seq
        self.check = check


class ComplianceError(FedshieldError):
    """A required compliance control fails (``fedshield compliance check``)."""

    exit_code = 12
    default_hint = "Run `fedshield compliance report` to see the evidence behind each control."
