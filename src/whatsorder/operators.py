"""The console's operators: names, roles and what each may do, and their passwords' hashes.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's second recommended
profile); only the hash is stored. A sign-in for a name that does not exist still verifies a
hash, so the answer takes as long as for a wrong password and says nothing about which it was.
"""

from __future__ import annotations

import enum
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD_LENGTH = 12
# Verified when the name is unknown, so that both failures cost one argon2 verification.
_UNKNOWN = _hasher.hash("an operator that does not exist")


class Role(enum.StrEnum):
    VIEWER = "viewer"  # reads every page, changes nothing
    OPERATOR = "operator"  # runs the shop: re-drives, resolves exceptions, edits the catalogue
    ADMIN = "admin"  # and more: starts a cleanup, reveals a phone number

    def may_change(self) -> bool:
        return self is not Role.VIEWER

    def is_admin(self) -> bool:
        return self is Role.ADMIN


class OperatorError(ValueError):
    """A name or password that cannot be used; the message says what to do instead."""


class StaleEdit(Exception):
    """What an operator edited changed since their page was loaded: nothing was written."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise OperatorError(
            "An operator name is 1-64 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` is the one hashed; None (no such operator) is never a match."""
    try:
        return _hasher.verify(password_hash or _UNKNOWN, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False
