"""V1 JSON request bodies for the transformer, built without tritonclient (so kserve may share
the process, as in the test suite)."""

from __future__ import annotations

import base64
import json

JSON_HEADERS = {"content-type": "application/json"}


def v1_body(image: bytes) -> bytes:
    """The V1 request body for one image: {"instances": [{"image": {"b64": ...}}]}."""
    encoded = base64.b64encode(image).decode("ascii")
    return json.dumps({"instances": [{"image": {"b64": encoded}}]}).encode()
