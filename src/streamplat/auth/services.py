"""Auth rules: registration, login, token refresh and revocation, user management."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from streamplat.auth.models import RefreshToken, User
from streamplat.auth.passwords import PasswordHashing
from streamplat.auth.principals import PrincipalCache
from streamplat.auth.schemas import (
    LoginUser,
    Principal,
    RegisterIn,
    TokenPair,
    UserList,
    UserOut,
    UserUpdateIn,
)
from streamplat.auth.tokens import InvalidToken, TokenIssuer, hash_refresh_token
from streamplat.db import fetch_page, isoformat, utcnow
from streamplat.errors import Conflict, Forbidden, NotFound, Unauthorized
from streamplat.events import EventBus, UserChanged
from streamplat.readcache import ReadCache

log = logging.getLogger(__name__)

BAD_CREDENTIALS = "Invalid email or password"
BAD_TOKEN = "Invalid or expired token"


def user_out(user: User) -> UserOut:
    """The public view of a user."""
    return UserOut(
        id=user.id,
        username=user.username,
        email=user.email,
        role=user.role,
        is_active=user.is_active,
        created_at=isoformat(user.created_at) or "",
    )


class AuthService:
    """Users, passwords and tokens; the one place that checks an access token."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        passwords: PasswordHashing,
        tokens: TokenIssuer,
        refresh_ttl_seconds: int,
        bus: EventBus | None = None,
        principals: PrincipalCache | None = None,
    ) -> None:
        self._sessions = sessions
        self._passwords = passwords
        self._tokens = tokens
        self._refresh_ttl = refresh_ttl_seconds
        self._bus = bus or EventBus()
        # Off unless given: only a cache attached to `bus` learns about changes.
        self.principals = principals or PrincipalCache(ttl_seconds=0)
        # Answers of GET /auth/users, for as long as principals are trusted; every user change
        # (UserChanged, from here or relayed from another node) forgets them all.
        self._user_pages: ReadCache[tuple[object, ...], UserList] = ReadCache(
            self.principals.ttl, max_entries=1_000
        )
        self._bus.subscribe(UserChanged, self.forget_user_pages)

    def forget_user_pages(self, _event: UserChanged | None = None) -> None:
        """A user changed or appeared: the cached pages of the user list are out of date."""
        self._user_pages.clear()

    # --- registration and login --------------------------------------------------------------

    async def register(self, data: RegisterIn, actor: Principal | None) -> UserOut:
        """Create a user; admins may only be created by an admin."""
        if data.role == "admin" and not (actor and actor.is_admin):
            raise Forbidden("Only an admin can register an admin account")
        # Hashed before the session opens, so no connection waits on argon2.
        return await self._insert_user(data, await self._passwords.hash(data.password))

    async def _insert_user(self, data: RegisterIn, password_hash: str) -> UserOut:
        email = data.email.strip().lower()
        async with self._sessions() as session:
            await self._ensure_unique(session, email, data.username)
            user = User(
                username=data.username,
                email=email,
                password_hash=password_hash,
                role=data.role,
                is_active=True,
            )
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                # Two registrations raced past the check above; the unique constraint decides.
                await session.rollback()
                await self._ensure_unique(session, email, data.username)
                raise Conflict("User already exists") from None
        # Announced like any change to a user: user lists here and on other nodes show it.
        await self._bus.publish(UserChanged(user.id))
        log.info("user registered id=%s username=%s role=%s", user.id, user.username, user.role)
        return user_out(user)

    @staticmethod
    async def _ensure_unique(session: AsyncSession, email: str, username: str) -> None:
        if await session.scalar(select(User.id).where(User.email == email)):
            raise Conflict("Email already registered")
        if await session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
            raise Conflict("Username already taken")

    async def login(self, email: str, password: str) -> TokenPair:
        """Check the credentials and issue an access and a refresh token."""
        # Read, then give the connection back before argon2 runs (~0.1 s on a busy thread, longer
        # when logins queue): a login burst must not hold the pool every other request needs.
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.email == email.strip().lower()))
        ok = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok:
            raise Unauthorized(BAD_CREDENTIALS)
        if not user.is_active:
            raise Forbidden("Account is deactivated")
        new_hash = None
        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash(password)
        async with self._sessions() as session:
            if new_hash is not None:
                # Only over the hash just verified: a password changed meanwhile wins.
                await session.execute(
                    update(User)
                    .where(User.id == user.id, User.password_hash == user.password_hash)
                    .values(password_hash=new_hash)
                )
                log.info("password rehashed with current parameters user_id=%s", user.id)
            pair = await self._issue_pair(session, user, family_id=str(uuid.uuid4()))
            await session.commit()
        return pair

    async def _issue_pair(self, session: AsyncSession, user: User, family_id: str) -> TokenPair:
        token, token_hash = self._tokens.new_refresh_token()
        session.add(
            RefreshToken(
                user_id=user.id,
                token_hash=token_hash,
                family_id=family_id,
                expires_at=utcnow() + dt.timedelta(seconds=self._refresh_ttl),
            )
        )
        return TokenPair(
            access_token=self._tokens.issue_access(user.id, user.username, user.role),
            token_type="Bearer",
            expires_in=self._tokens.access_ttl_seconds,
            refresh_token=token,
            refresh_expires_in=self._refresh_ttl,
            user=LoginUser(id=user.id, username=user.username, email=user.email, role=user.role),
        )

    # --- refresh tokens ------------------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend a refresh token for a new pair; a spent token used again revokes its whole family."""
        now = utcnow()
        async with self._sessions() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
            )
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                raise Unauthorized("Invalid or expired refresh token")
            if row.used_at is not None:
                # Someone replays a rotated token: assume it was stolen and end every session of this login.
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                await session.commit()
                log.warning("refresh token reuse detected user_id=%s; login revoked", row.user_id)
                raise Unauthorized("Refresh token already used")
            user = await session.get(User, row.user_id)
            if user is None or not user.is_active:
                raise Unauthorized("Invalid or expired refresh token")
            # Spend it with a conditional UPDATE so two concurrent refreshes cannot both succeed.
            spent = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                raise Unauthorized("Refresh token already used")
            pair = await self._issue_pair(session, user, family_id=row.family_id)
            await session.commit()
        return pair

    async def logout(self, refresh_token: str) -> None:
        """Revoke a refresh token (and the rest of its login); unknown tokens are ignored."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
            )
            if row is None:
                return
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            await session.commit()

    # --- access tokens -------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """The user behind a valid access token; 401 for anything else, incl. deactivated users."""
        if not token:
            raise Unauthorized(BAD_TOKEN)
        try:
            claims = self._tokens.check_access(token)
        except InvalidToken:
            raise Unauthorized(BAD_TOKEN) from None
        # Role changes take effect at once: the database, not the token, is the truth. The cache
        # holds the database's answer for a moment and is emptied on every change (principals.py).
        principal = await self.principals.get_or_load(claims.user_id, lambda: self._active(claims.user_id))
        if principal is None:
            raise Unauthorized(BAD_TOKEN)
        return principal

    async def _active(self, user_id: int) -> Principal | None:
        async with self._sessions() as session:
            user = await session.get(User, user_id)
        if user is None or not user.is_active:
            return None
        return Principal(id=user.id, username=user.username, role=user.role)

    # --- user management (admin) ------------------------------------------------------------

    async def list_users(self, limit: int, offset: int, role: str | None = None) -> UserList:
        """A page of users, oldest first."""

        async def load() -> UserList:
            conditions = [User.role == role] if role else []
            query = select(User).where(*conditions).order_by(User.id)
            count = select(func.count(User.id)).where(*conditions)
            async with self._sessions() as session:
                rows, total = await fetch_page(session, query, count, limit, offset)
            return UserList(
                users=[user_out(user) for (user,) in rows], total=total, limit=limit, offset=offset
            )

        return await self._user_pages.get_or_read((role, limit, offset), load)

    async def update_user(self, user_id: int, data: UserUpdateIn, actor: Principal) -> UserOut:
        """Change a user's role or active flag; the last active admin cannot be demoted or deactivated."""
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound("User not found")
            losing_admin = (
                user.role == "admin"
                and user.is_active
                and ((isinstance(data.role, str) and data.role != "admin") or data.is_active is False)
            )
            if losing_admin:
                await self._demote_unless_last_admin(session, user, data)
            if isinstance(data.role, str):  # left out: UNSET, unchanged
                user.role = data.role
            if isinstance(data.is_active, bool):
                user.is_active = data.is_active
                if not data.is_active:
                    await session.execute(
                        update(RefreshToken)
                        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                        .values(revoked_at=utcnow())
                    )
            await session.commit()
        # Before the reply: a deactivated user's next request is already refused.
        await self._bus.publish(UserChanged(user.id))
        log.info("user updated id=%s role=%s active=%s by=%s", user.id, user.role, user.is_active, actor.id)
        return user_out(user)

    @staticmethod
    async def _demote_unless_last_admin(session: AsyncSession, user: User, data: UserUpdateIn) -> None:
        # Checking the count and then writing is a race: two admins demoting each other at once
        # both see two admins and leave none. The check therefore sits inside the write:
        # - PostgreSQL: FOR UPDATE locks every active admin row, so a concurrent demotion waits
        #   for this transaction and then counts again;
        # - SQLite: FOR UPDATE is dropped, but the UPDATE below is the transaction's first
        #   statement, and SQLite runs it under its single write lock on the newest data.
        active_admin = (User.role == "admin", User.is_active.is_(True))
        # In id order: two demotions lock the same rows in the same order, so neither deadlocks.
        await session.execute(select(User.id).where(*active_admin).order_by(User.id).with_for_update())
        other_admins = select(func.count(User.id)).where(*active_admin, User.id != user.id).scalar_subquery()
        values: dict[str, object] = {}
        if isinstance(data.role, str):  # left out: UNSET, unchanged
            values["role"] = data.role
        if isinstance(data.is_active, bool):
            values["is_active"] = data.is_active
        done = await session.execute(
            update(User)
            .where(User.id == user.id, other_admins > 0)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            raise Conflict("Cannot demote or deactivate the last active admin")

    async def create_admin(self, email: str, username: str, password: str | None) -> tuple[UserOut, bool]:
        """Create an admin, or promote the existing user with that email; True if created."""
        email = email.strip().lower()
        # Hashed before the session opens, so no connection waits on argon2.
        password_hash = await self._passwords.hash(password) if password else None
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.email == email))
            if user is not None:
                user.role = "admin"
                user.is_active = True
                if password_hash:
                    user.password_hash = password_hash
                await session.commit()
                await self._bus.publish(UserChanged(user.id))
                return user_out(user), False
        if not password:
            raise ValueError("a password is required to create a new admin")
        assert password_hash is not None
        created = await self._insert_user(
            RegisterIn(username=username, email=email, password=password, role="admin"), password_hash
        )
        return created, True
