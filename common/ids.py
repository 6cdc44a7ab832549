"""What a request id may look like: the ids clients send are kept when they match (they end up
in headers, log lines and the prediction log), and labels name requests by them."""

from __future__ import annotations

import re

VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
MAX_REQUEST_ID_LENGTH = 128
