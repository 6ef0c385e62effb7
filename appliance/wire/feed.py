"""Reading the Wire system's burn feed, page by page.

The feed only transports burn records; it is not trusted with their truth (each record is
verified on its own by `appliance.wire.burns.verify_burn`). What this module does insist on is
that an answer is a well-formed page of bounded size, so a broken or hostile feed costs a
refused poll and nothing more.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

__all__ = ["MAX_RESPONSE", "BurnFeed", "FeedError"]

MAX_RESPONSE: Final = 8 << 20
MAX_CURSOR: Final = 1024
_CHUNK: Final = 64 << 10


class FeedError(Exception):
    """The feed could not be read, or answered something that is not a page of burns."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BurnFeed:
    """Polls the Wire system's burn feed.

    `GET {base_url}/burns?after=<cursor>&limit=<n>` (no `after` on the very first poll)
    answers `{"burns": [{"record": {...}, "signature": "<hex>"}, ...], "cursor": "<opaque>"}`,
    plain HTTP(S) through urllib with a timeout. The cursor is the caller's to persist: it is
    returned with each page, and the caller stores it only once the page's burns are safely
    taken on, so a restart resumes exactly where the last stored page ended, losing nothing
    and repeating nothing.
    """

    def __init__(self, base_url: str, timeout: float = 10.0, max_page: int = 500) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"burn feed URL {base_url!r} must be http(s)://host[:port][/path]")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if not 1 <= max_page <= 10_000:
            raise ValueError("max_page must be between 1 and 10000")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_page = max_page

    def url(self, cursor: str | None) -> str:
        query: dict[str, str | int] = {"limit": self.max_page}
        if cursor is not None:
            query = {"after": cursor, **query}
        return f"{self.base_url}/burns?{urlencode(query)}"

    def fetch(self, cursor: str | None) -> tuple[list[Any], str | None]:
        """The next page after `cursor` (None: from the start): its raw items, unverified, and
        the cursor to continue from (the one given, if the page is empty).

        Items are returned raw so that the caller verifies and refuses them one by one: a
        single bad record must not hold back the others. Raises `FeedError` if the feed cannot
        be reached, answers other than 200, sends more than `MAX_RESPONSE` bytes or anything
        but a page of at most `max_page` items.
        """
        body = self._get(self.url(cursor))
        try:
            page = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise FeedError(f"burn feed answered something that is not JSON: {exc}") from None
        if not isinstance(page, dict) or set(page) != {"burns", "cursor"}:
            raise FeedError("burn feed page must be an object with exactly burns and cursor")
        burns, next_cursor = page["burns"], page["cursor"]
        if not isinstance(burns, list):
            raise FeedError("burn feed page: burns must be a list")
        if len(burns) > self.max_page:
            raise FeedError(f"burn feed page has {len(burns)} items, asked for {self.max_page}")
        if next_cursor is not None and (
            not isinstance(next_cursor, str) or not 0 < len(next_cursor) <= MAX_CURSOR
        ):
            raise FeedError(f"burn feed page: cursor must be a string of 1 to {MAX_CURSOR} chars")
        if not burns:
            return [], cursor
        if next_cursor is None:
            # Without a cursor after a non-empty page the next poll would start over.
            raise FeedError("burn feed page has burns but no cursor")
        return burns, next_cursor

    def _get(self, url: str) -> bytes:
        """The body of a 200 answer to GET `url`, read within about twice the timeout.

        urllib's timeout bounds each socket operation, not the whole answer; the deadline
        between chunks keeps a feed that trickles bytes from holding the poll forever.
        """
        # The scheme was checked to be http or https in __init__.
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                if response.status != 200:
                    raise FeedError(f"burn feed answered HTTP {response.status} for {url}")
                chunks: list[bytes] = []
                size = 0
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_RESPONSE:
                        raise FeedError(f"burn feed answer exceeds {MAX_RESPONSE} bytes")
                    if time.monotonic() > deadline:
                        raise FeedError(f"burn feed answer took longer than {self.timeout:g} s")
                    chunks.append(chunk)
        except urllib.error.HTTPError as exc:
            raise FeedError(f"burn feed answered HTTP {exc.code} for {url}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FeedError(f"burn feed {url} could not be read: {exc}") from None
        return b"".join(chunks)
