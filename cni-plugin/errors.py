"""CNI error codes and the one exception type the plugin raises.

Why a module of its own: every step of the plugin (env, stdin, netconf, subnet.env, delegate)
fails with a spec error code, and `main` turns any of them into the spec's error JSON.
"""

from __future__ import annotations

# Codes from the CNI spec (SPEC.md, "Error"), 1.1.0.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETCONF = 7
TRY_AGAIN_LATER = 11
STATUS_NOT_AVAILABLE = 50
STATUS_DEGRADED = 51
# This plugin's own codes (>= 100, as the spec reserves).
BAD_SUBNET_FILE = 100  # subnet.env has every variable but a value does not parse
DELEGATE_UNAVAILABLE = 101  # delegate not in CNI_PATH, not executable, or its output is garbage
CHECK_MISMATCH = 102  # CHECK: the pod's interface, addresses, routes or MTU differ
INTERNAL = 999  # what libcni's skel uses for errors without a code


class CniError(Exception):
    """A failure with its CNI error code; `details` is optional extra text."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg} ({self.details})" if self.details else self.msg
