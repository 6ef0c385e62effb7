"""The operators' authenticator app, for the local cluster, the demo and the tests: the TOTP
codes of enrolled operators, each 30-second step handed out once (the engine takes a code
once), waiting for the next step when an operator has used every step it accepts now."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pyotp

__all__ = ["Authenticator", "seed_of"]

STEP = 30


def seed_of(otpauth_uri: str) -> str:
    """The base32 seed of an enrolment's otpauth:// URI."""
    return parse_qs(urlsplit(otpauth_uri).query)["secret"][0]


class Authenticator:
    def __init__(self) -> None:
        self.seeds: dict[str, str] = {}
        self.last_step: dict[str, int] = {}

    def add(self, username: str, otpauth_uri: str) -> None:
        self.seeds[username] = seed_of(otpauth_uri)
        self.last_step.pop(username, None)

    def __contains__(self, username: object) -> bool:
        return username in self.seeds

    def fresh(self, username: str) -> bool:
        """Whether `username` has a step it has not used that the engine accepts now."""
        return self._fresh_step(username, time.time()) is not None

    def _fresh_step(self, username: str, now: float) -> int | None:
        current = int(now // STEP)
        candidates = ([current - 1] if now % STEP < STEP - 5 else []) + [current, current + 1]
        fresh = [s for s in candidates if s > self.last_step.get(username, -1)]
        return fresh[0] if fresh else None

    def code(self, username: str, within: float = 2 * STEP) -> str:
        """A code of a step `username` has not used, accepted now (the engine takes the
        steps either side of its own). The step before is offered only early in the current
        one, so that it is still accepted when the request arrives."""
        deadline = time.monotonic() + within
        while True:
            now = time.time()
            step = self._fresh_step(username, now)
            if step is not None:
                self.last_step[username] = step
                return pyotp.TOTP(self.seeds[username]).at(step * STEP)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fresh TOTP step for {username} within {within} s")
            time.sleep(min(1.0, STEP - now % STEP + 0.05))

    def proof(self, username: str) -> dict[str, str]:
        """What a command the engine authorizes itself carries."""
        return {"username": username, "code": self.code(username)}
