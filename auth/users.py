"""Companies and users: creation, lookup, listing. Shared by the CLI, the API and samples."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth import audit
from auth.models import Company, User
from auth.passwords import MIN_PASSWORD_LENGTH, hash_password
from auth.permissions import ROLES
from auth.revocation import bump_auth_epoch
from auth.sessions import revoke_user_tokens
from auth.tokens import COMPANY_ID_RE
from core.errors import Conflict, NotFound, ServiceError

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def new_id() -> str:
    return str(uuid.uuid4())


def check_company_id(company_id: str, what: str = "company id") -> str:
    """An id given by an operator (the ILS platform's own, so its tokens' `companyId` / `userId`
    resolve as they are): what tokens, the docstore namespace and per-company index names can carry."""
    if not COMPANY_ID_RE.match(company_id):
        raise ServiceError(f"{what} {company_id!r} must be 1-64 letters, digits or dashes (a UUID or a number)",
                           code="VALIDATION_ERROR", status_code=422)
    return company_id


def create_company(session: Session, slug: str, name: str, company_id: str | None = None) -> Company:
    """`company_id`: the platform's id for this practice; default a new UUID."""
    if not SLUG_RE.match(slug):
        raise ServiceError(f"company slug {slug!r} must be 2-63 lowercase letters, digits or dashes",
                           code="VALIDATION_ERROR", status_code=422)
    if session.scalar(select(Company).where(Company.slug == slug)):
        raise Conflict(f"company {slug!r} already exists", code="COMPANY_EXISTS")
    if company_id is not None and session.get(Company, check_company_id(company_id)) is not None:
        raise Conflict(f"a company with id {company_id!r} already exists", code="COMPANY_EXISTS")
    company = Company(id=company_id or new_id(), slug=slug, name=name, is_active=True)
    session.add(company)
    session.flush()
    return company


def get_company_by_slug(session: Session, slug: str) -> Company:
    company = session.scalar(select(Company).where(Company.slug == slug))
    if company is None:
        raise NotFound(f"no company with slug {slug!r} (see `ils-rag companies list`)", code="COMPANY_NOT_FOUND")
    return company


def list_companies(session: Session) -> list[Company]:
    return list(session.scalars(select(Company).order_by(Company.slug)))


def create_user(session: Session, company_id: str, email: str, password: str, role: str,
                full_name: str | None = None, user_id: str | None = None) -> User:
    """`user_id`: the ILS platform's id for this person (what its tokens' userId says); default a new UUID."""
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise ServiceError(f"{email!r} is not an email address", code="VALIDATION_ERROR", status_code=422)
    if role not in ROLES:
        raise ServiceError(f"role must be one of {', '.join(ROLES)}", code="VALIDATION_ERROR", status_code=422)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServiceError(f"password must be at least {MIN_PASSWORD_LENGTH} characters",
                           code="VALIDATION_ERROR", status_code=422)
    if find_user_in_company(session, company_id, email):
        raise Conflict(f"user {email} already exists in this company", code="USER_EXISTS")
    if user_id is not None and find_user(session, company_id, check_company_id(user_id, "user id")) is not None:
        raise Conflict(f"a user with id {user_id!r} already exists in this company", code="USER_EXISTS")
    user = User(id=user_id or new_id(), company_id=company_id, email=email, password_hash=hash_password(password),
                role=role, full_name=full_name, is_active=True)
    session.add(user)
    session.flush()
    return user


def find_user_in_company(session: Session, company_id: str, email: str) -> User | None:
    return session.scalar(
        select(User).where(User.company_id == company_id, func.lower(User.email) == email.strip().lower())
    )


def list_users(session: Session, company_id: str | None = None) -> list[User]:
    query = select(User).order_by(User.company_id, User.email)
    if company_id:
        query = query.where(User.company_id == company_id)
    return list(session.scalars(query))


def find_user(session: Session, company_id: str, user_id: str) -> User | None:
    return session.get(User, (company_id, user_id))


def get_user(session: Session, company_id: str, user_id: str) -> User:
    """A user of `company_id` only: another company's id is simply not found."""
    user = find_user(session, company_id, user_id)
    if user is None:
        raise NotFound(f"no user {user_id} in your company", code="USER_NOT_FOUND")
    return user


def _active_admins(session: Session, company_id: str) -> int:
    return session.scalar(select(func.count()).select_from(User).where(
        User.company_id == company_id, User.role == "admin", User.is_active.is_(True))) or 0


def update_user(session: Session, company_id: str, user_id: str, *, actor_id: str | None,
                role: str | None = None, is_active: bool | None = None, client_ip: str | None = None,
                actor_client_name: str | None = None) -> User:
    """Change a user's role and/or active flag, audited. Both end the user's access tokens at once
    (their auth epoch moves); deactivation also revokes their refresh tokens. `actor_client_name`:
    the service client's name when one acts (auth.audit.record).

    Refuses a change that would leave the company without an active admin, so nobody can
    lock a practice out of its own user management.
    """
    user = get_user(session, company_id, user_id)
    if role is not None and role not in ROLES:
        raise ServiceError(f"role must be one of {', '.join(ROLES)}", code="VALIDATION_ERROR", status_code=422)
    loses_admin = user.role == "admin" and user.is_active and (
        (role is not None and role != "admin") or is_active is False)
    if loses_admin and _active_admins(session, company_id) <= 1:
        raise Conflict("this is the company's last active admin; promote another admin first", code="LAST_ADMIN")
    if role is not None and role != user.role:
        audit.record(session, company_id, actor_id, audit.ROLE_CHANGED, target=user.id,
                     details={"email": user.email, "from": user.role, "to": role}, client_ip=client_ip,
                     client_name=actor_client_name)
        user.role = role
        bump_auth_epoch(session, company_id, user.id)  # tokens saying the old role fail from now on
    if is_active is not None and is_active != user.is_active:
        user.is_active = is_active
        if is_active:
            audit.record(session, company_id, actor_id, audit.USER_REACTIVATED, target=user.id,
                         details={"email": user.email}, client_ip=client_ip, client_name=actor_client_name)
        else:
            revoked = revoke_user_tokens(session, company_id, user.id)
            bump_auth_epoch(session, company_id, user.id)  # and reactivation will not revive them
            audit.record(session, company_id, actor_id, audit.USER_DEACTIVATED, target=user.id,
                         details={"email": user.email, "revoked_refresh_tokens": revoked}, client_ip=client_ip,
                         client_name=actor_client_name)
    session.flush()
    return user
