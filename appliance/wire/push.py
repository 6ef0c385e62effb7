"""Telling the Wire system something (a signed attestation, a paid burn): one JSON POST,
delivered only when the Wire system explicitly acknowledges it with `{"ack": true}`."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

__all__ = ["post_json"]

log = logging.getLogger(__name__)


def post_json(url: str, body: dict[str, Any]) -> bool:
    """POST `body` to the configured http(s) `url`; True only on an acknowledgement."""
    request = urllib.request.Request(  # noqa: S310 - the configured http(s) endpoint
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read(1 << 16))
            return response.status == 200 and isinstance(answer, dict) and answer.get("ack") is True
    except (OSError, ValueError) as exc:
        log.warning("POST to %s failed: %s", url, exc)
        return False
