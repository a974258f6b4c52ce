"""The shared-token auth flow of the connectors that log in (Mission Capital, Trendsic,
Expandable), in the spirit of httpx's ``Auth.auth_flow``.

A job's calls carry the fleet's token (``worker/credentials.py``). When an answer is the
destination's way of saying the token is no good (``expired``: a 401, a ``Reauth`` outcome), the
token is renewed for the whole fleet, once per job however many calls the job makes, and the
call is sent once more. A login that is refused becomes the connector's ``refused`` answer; a
login that got no verdict (the destination down) becomes its own answer. Every token seen is
kept to be scrubbed from anything a person may read.

Each connector supplies only its login (to ``SharedToken``), its ``expired`` check and its
``refused`` answer. This module declares no ``Destination``: it is a helper, not a destination.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Generic, TypeVar

from tasks.delivery import Answer, LoginUnanswered
from worker.credentials import LoginFailed, SharedToken, Token

R = TypeVar("R")


class TokenAuth(Generic[R]):
    """One connector's use of a token. shared: the fleet's token, renewed when refused; None
    with ``static``: a token that never changes (an API key), sent as it is and never renewed.
    expired(response): whether an answer says the token was refused. refused(error): the answer
    of a job whose login was refused."""

    def __init__(
        self,
        shared: SharedToken | None,
        expired: Callable[[R], bool],
        refused: Callable[[LoginFailed], Answer],
        static: Token | None = None,
        remember: int = 16,
    ) -> None:
        if (shared is None) == (static is None):
            raise ValueError("a TokenAuth has either a shared token or a static one")
        self.shared = shared
        self._static = static
        self._expired = expired
        self._refused = refused
        self._seen: deque[str] = deque(maxlen=remember)
        self._lock = threading.Lock()

    def run(self, job: Callable[[AuthSession[R]], Answer]) -> Answer:
        """``job(session)``, its calls sent through ``session.send``; a login that fails ends
        the job with the connector's answer for it."""
        try:
            return job(AuthSession(self))
        except LoginFailed as exc:
            return self._refused(exc)
        except LoginUnanswered as exc:
            return exc.answer

    def secrets(self) -> list[str]:
        """The latest token values (and refresh tokens) this process carried."""
        with self._lock:
            return list(self._seen)

    def current(self) -> Token:
        if self.shared is None:
            assert self._static is not None
            return self._static
        return self.remember(self.shared.get())

    def renewed(self, stale: Token) -> Token:
        assert self.shared is not None
        return self.remember(self.shared.refresh(stale))

    def expired(self, response: R) -> bool:
        return self.shared is not None and self._expired(response)

    def remember(self, token: Token) -> Token:
        """Keep ``token`` (and its refresh token) among the secrets to scrub."""
        with self._lock:
            for value in (token.value, token.data.get("refresh_token", "")):
                if value and value not in self._seen:
                    self._seen.append(value)
        return token


class AuthSession(Generic[R]):
    """One job's token: renewed at most once, however many calls the job makes."""

    def __init__(self, auth: TokenAuth[R]) -> None:
        self._auth = auth
        self.token = auth.current()
        self.refreshed = False

    def flow(self) -> Generator[Token, R, R]:
        """Yields the token to send a call with and receives its answer; yields a renewed token
        once if that answer says the token was refused; returns the answer to keep."""
        response = yield self.token
        if self.refreshed or not self._auth.expired(response):
            return response
        self.token = self._auth.renewed(self.token)
        self.refreshed = True
        return (yield self.token)

    def send(self, call: Callable[[Token], R]) -> R:
        """``call(token)``, and once more with a renewed token if its answer says so."""
        flow = self.flow()
        token = next(flow)
        while True:
            try:
                token = flow.send(call(token))
            except StopIteration as done:
                answer: R = done.value
                return answer
