"""Development credentials: the voter-key secret, the audit signing key, the key that signs
the administrator's access tokens, and role tokens, generated once and kept.

In production every credential comes from the environment (Settings.check insists). In
development, what is unset is generated on first start and kept in the data folder, so that
voter keys stay stable across restarts (a new secret would let a voter vote again) and
dashboards keep working.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from infra.audit.chain import new_seed
from infra.runtime.settings import ROLES, Settings

CREDENTIALS_FILE = "credentials.json"


@dataclass
class Credentials:
    settings: Settings
    # Roles whose token the environment did not give: generated now, or earlier and read
    # back from the data folder (those are also in read_back).
    generated_roles: list[str] = field(default_factory=list)
    read_back: list[str] = field(default_factory=list)


def complete(settings: Settings) -> Credentials:
    """Settings with every credential present, generating and keeping missing ones."""
    if settings.is_production:
        return Credentials(settings)
    path = settings.data_dir / CREDENTIALS_FILE
    # Processes started at once on a fresh folder (serve's API children, or an api and a
    # project started together) each generated their own secret: one voter then had two
    # ballot keys, and voted twice. The first to take the lock generates; the others read.
    with _locked(path):
        return _complete(settings, path)


def _complete(settings: Settings, path: Path) -> Credentials:
    kept = _read(path)
    changed = False
    secret = settings.secret
    if secret is None:
        if "secret" not in kept:
            kept["secret"] = secrets.token_hex(32)
            changed = True
        secret = str(kept["secret"])
    audit_key = settings.audit_key
    if audit_key is None:
        if "audit_key" not in kept:
            kept["audit_key"] = new_seed()
            changed = True
        audit_key = str(kept["audit_key"])
    jwt_secret_key = settings.jwt_secret_key
    if jwt_secret_key is None:  # signs the administrator's access tokens
        if "jwt_secret_key" not in kept:
            kept["jwt_secret_key"] = secrets.token_hex(32)
            changed = True
        jwt_secret_key = str(kept["jwt_secret_key"])
    tokens = dict(settings.role_tokens)
    generated: list[str] = []
    read_back: list[str] = []
    for role in ROLES:
        if tokens.get(role):
            continue
        key = f"{role}_token"
        if key not in kept:
            kept[key] = f"cv_{role}_{secrets.token_urlsafe(18)}"
            changed = True
        else:
            read_back.append(role)
        tokens[role] = (str(kept[key]),)
        generated.append(role)
    if changed:
        _write(path, kept)
    completed = settings.with_overrides(
        secret=secret, audit_key=audit_key, role_tokens=tokens, jwt_secret_key=jwt_secret_key
    )
    return Credentials(completed, generated, read_back)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _write(path: Path, kept: dict[str, object]) -> None:
    """Whole or not at all, and never readable by others (created 0600, then renamed)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(kept, indent=2))
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _read(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object; remove it to regenerate credentials")
    return data
