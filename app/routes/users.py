"""User management for a company's admins (permission users:manage), always within the
token's company: another company's user ids are not found (404), and a `company_id` sent
in the query or body that is not the token's is refused (403)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app.deps import CurrentUser, TenantSession, check_company, client_ip, require
from app.request_models import RequestModel
from auth import audit
from auth.models import User
from auth.permissions import Permission
from auth.users import create_user, get_user, list_users, update_user

router = APIRouter(prefix="/api/users", tags=["users"])
manage = require(Permission.USERS_MANAGE)
_ERRORS = {401: {"description": "NOT_AUTHENTICATED / INVALID_TOKEN / TOKEN_EXPIRED"},
           403: {"description": "FORBIDDEN: lacks users:manage, or another company's company_id"}}


class UserOut(BaseModel):
    id: str
    company_id: str
    email: str
    full_name: str | None
    role: str
    is_active: bool
    last_login_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(id=user.id, company_id=user.company_id, email=user.email, full_name=user.full_name,
                   role=user.role, is_active=user.is_active, last_login_at=user.last_login_at,
                   created_at=user.created_at)


class UserList(BaseModel):
    users: list[UserOut]


class CreateUserRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=8, max_length=1024)
    role: str = Field(default="staff", description="admin or staff")
    full_name: str | None = Field(default=None, max_length=200)
    company_id: str | None = Field(default=None, description="Optional; must be your own company.")


class UpdateUserRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    is_active: bool | None = None
    role: str | None = None
    company_id: str | None = Field(default=None, description="Optional; must be your own company.")


@router.get("", response_model=UserList, responses=_ERRORS)
def list_company_users(session: TenantSession, company_id: str | None = Query(default=None, max_length=64),
                       user: CurrentUser = Depends(manage)) -> UserList:
    company = check_company(user, company_id)
    return UserList(users=[UserOut.of(u) for u in list_users(session, company)])


@router.post("", response_model=UserOut, status_code=201,
             responses={**_ERRORS, 409: {"description": "USER_EXISTS"}})
def create_company_user(body: CreateUserRequest, request: Request, session: TenantSession,
                        user: CurrentUser = Depends(manage)) -> UserOut:
    company = check_company(user, body.company_id)
    created = create_user(session, company, body.email, body.password, body.role, body.full_name)
    audit.record(session, company, user.id, audit.USER_CREATED, target=created.id,
                 details={"email": created.email, "role": created.role}, client_ip=client_ip(request),
                 client_name=user.client_name)
    return UserOut.of(created)


@router.get("/{user_id}", response_model=UserOut, responses={**_ERRORS, 404: {"description": "USER_NOT_FOUND"}})
def get_company_user(user_id: str, session: TenantSession, user: CurrentUser = Depends(manage)) -> UserOut:
    return UserOut.of(get_user(session, user.company_id, user_id))


@router.patch("/{user_id}", response_model=UserOut,
              responses={**_ERRORS, 404: {"description": "USER_NOT_FOUND"}, 409: {"description": "LAST_ADMIN"}})
def update_company_user(user_id: str, body: UpdateUserRequest, request: Request,
                        session: TenantSession, user: CurrentUser = Depends(manage)) -> UserOut:
    """Deactivate/reactivate (`is_active`) or change `role`; deactivation ends the user's sessions."""
    company = check_company(user, body.company_id)
    updated = update_user(session, company, user_id, actor_id=user.id, actor_client_name=user.client_name,
                          role=body.role, is_active=body.is_active, client_ip=client_ip(request))
    return UserOut.of(updated)
