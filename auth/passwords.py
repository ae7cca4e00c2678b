"""Argon2id password hashing (argon2-cffi defaults: 64 MiB, t=3, p=4, above OWASP's floor)."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8  # shared by user creation and password changes


@lru_cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


@lru_cache
def _dummy_hash() -> str:
    return _hasher().hash("not-a-real-password-used-for-timing")


def verify_password(password: str, password_hash: str | None) -> bool:
    """Checks a password; with no hash (unknown user) it still does one full argon2 verify,
    so login timing does not reveal which accounts exist."""
    try:
        return _hasher().verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher().check_needs_rehash(password_hash)
