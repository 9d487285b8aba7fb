"""The site's side of masking that touches files: its policy file and its pseudonym key.

This is the thin edge around the pure core (:mod:`~fedshield.masking.policy`,
:mod:`~fedshield.masking.table`):

* :func:`policy_path_for` says where a participant's policy is: the site's own
  ``[data] masking_policy`` (``{participant}`` is replaced by its name; relative to the
  file that names it), else ``<csv_dir>/<participant>.masking.toml`` next to its data.
  The site decides; the coordinator never sends a policy.
* :func:`load_policy` reads and validates the TOML.
* :func:`load_key` reads the site's pseudonym key, creating it on first use: 32 bytes
  from :mod:`secrets`, hex, in a file created ``0600`` (a key readable by group or others
  is refused). It lives in the participant's kit (``masking.key``) or, in simulation,
  ``<workdir>/masking/<participant>.key``. It is never sent anywhere and never hashed
  into anything the site reports; losing it changes every pseudonym.
* :func:`site_masking` bundles the three for the data loader.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedshield.errors import ConfigError
from fedshield.masking.policy import MaskingPolicy, parse_policy, policy_sha3
from fedshield.masking.transforms import KEY_BYTES

__all__ = [
    "KIT_KEY_FILE",
    "POLICY_SUFFIX",
    "SiteMasking",
    "load_key",
    "load_policy",
    "policy_path_for",
    "site_masking",
]

POLICY_SUFFIX = ".masking.toml"
"""A participant's default policy is ``<csv_dir>/<participant>.masking.toml``."""
KIT_KEY_FILE = "masking.key"
"""The pseudonym key's file name in a participant kit."""


@dataclass(frozen=True, eq=False)
class SiteMasking:
    """A participant's masking: its policy (if any), where it is, and its key.

    Attributes
    ----------
    policy : MaskingPolicy or None
        The validated policy; None when the site has none (then nothing is masked and
        any column the scanner flags stops training).
    policy_path : Path
        Where the policy is, or would be.
    policy_sha3 : str or None
        SHA3-256 of the policy's canonical form: what the site reports for the audit log.
    key : bytes or None
        The pseudonym key (only when the policy pseudonymizes). Never printed.
    """

    policy: MaskingPolicy | None
    policy_path: Path
    policy_sha3: str | None
    key: bytes | None = field(default=None, repr=False)


def policy_path_for(
    *, participant: str, csv_dir: Path, configured: str | None, base_dir: Path
) -> Path:
    """Return where ``participant``'s masking policy is (see the module docstring)."""
    if configured:
        return (base_dir / configured.replace("{participant}", participant)).resolve()
    return (csv_dir / f"{participant}{POLICY_SUFFIX}").resolve()


def load_policy(path: Path) -> MaskingPolicy:
    """Read and validate the policy at ``path``.

    Raises
    ------
    ConfigError
        If the file is missing, not UTF-8 TOML, or not a valid policy (the message
        starts with the path).
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"masking policy {path} does not exist",
            hint="Write it (see docs/masking.md) or fix data.masking_policy.",
        ) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"masking policy {path} is not readable TOML: {exc}") from exc
    try:
        return parse_policy(document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from exc


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_key(path: Path, *, create: bool = True) -> bytes:
    """Return the site's pseudonym key from ``path``, creating it (mode 0600) if absent.

    Raises
    ------
    ConfigError
        If the file is readable or writable by group or others, malformed, or absent
        with ``create=False``.
    """
    if not path.exists():
        if not create:
            raise ConfigError(f"masking key {path} does not exist")
        _create_key(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read masking key {path}: {exc}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"masking key {path} is accessible to group or others (mode {stat.S_IMODE(mode):o})",
            hint=f"chmod 600 {path}",
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"masking key {path} is not {KEY_BYTES} bytes of hex",
            hint="Restore it from the site's backup; a new key changes every pseudonym.",
        )
    return key


def site_masking(
    *, policy_path: Path, key_path: Path | None, required: bool = False
) -> SiteMasking:
    """Load a participant's masking: its policy if the file exists, its key if needed.

    Parameters
    ----------
    policy_path : Path
        From :func:`policy_path_for`.
    key_path : Path or None
        Where the site's key is (created if the policy pseudonymizes and it is absent).
    required : bool, default False
        True when the site named its policy explicitly: then a missing file is an error.

    Raises
    ------
    ConfigError
        If the policy is invalid (or required and missing), or the key is unusable.
    """
    if not policy_path.is_file():
        if required:
            load_policy(policy_path)  # raises: names the missing file
        return SiteMasking(policy=None, policy_path=policy_path, policy_sha3=None)
    policy = load_policy(policy_path)
    key = None
    if any(rule.action == "pseudonymize" for rule in policy.columns.values()):
        if key_path is None:
            raise ConfigError(
                f"{policy_path} pseudonymizes columns but this site has no key location",
                hint="Run the participant from its kit (the key is kept there).",
            )
        key = load_key(key_path)
    return SiteMasking(
        policy=policy, policy_path=policy_path, policy_sha3=policy_sha3(policy), key=key
    )
