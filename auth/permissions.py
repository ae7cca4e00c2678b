"""Roles map to permissions; routes declare the permission they need, never a role."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Permission(StrEnum):
    KNOWLEDGE_READ = "knowledge:read"
    KNOWLEDGE_WRITE = "knowledge:write"
    CHAT = "chat:use"
    USERS_MANAGE = "users:manage"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "staff": frozenset({Permission.KNOWLEDGE_READ, Permission.CHAT}),
}
ROLES = tuple(ROLE_PERMISSIONS)


def permissions_for(role: str) -> list[str]:
    return sorted(p.value for p in ROLE_PERMISSIONS.get(role, frozenset()))


def platform_role_permissions(role: str, extra: Mapping[str, list[str]]) -> list[str]:
    """Permissions of a platform token that names a role but carries no `permissions` claim:
    PLATFORM_ROLE_PERMISSIONS first (the platform's own roles), then the default mapping above.
    Unknown permission names in the setting are dropped, never granted as strings."""
    if role in extra:
        known = {p.value for p in Permission}
        return sorted({name for name in extra[role] if name in known})
    return permissions_for(role)
