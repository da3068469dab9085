"""Users, passwords, tokens and the role guard every port uses."""

from streamplat.auth.guards import (
    authenticate,
    bearer_token,
    guarded_caller,
    header_bearer_token,
    optional_principal,
    provide_principal,
    requires_login,
    requires_role,
)
from streamplat.auth.models import User
from streamplat.auth.schemas import ROLES, Principal
from streamplat.auth.services import AuthService

__all__ = [
    "ROLES",
    "AuthService",
    "Principal",
    "User",
    "authenticate",
    "bearer_token",
    "guarded_caller",
    "header_bearer_token",
    "optional_principal",
    "provide_principal",
    "requires_login",
    "requires_role",
]
