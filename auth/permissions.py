"""Roles map to permissions; routes declare the permission they need, never a role."""

from __future__ import annotations

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
