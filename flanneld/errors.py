"""Domain errors shared across the daemon, the CLI and the backends."""

from __future__ import annotations


class FlannelError(Exception):
    """Base class for errors reported to the operator with a clear message."""


class ConfigError(FlannelError):
    """Invalid daemon flags, environment or config file."""


class NetworkConfigError(FlannelError):
    """Invalid network config (the JSON at <prefix>/config); names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"network config: {field}: {message}")
        self.field = field


class LeaseDecodeError(FlannelError):
    """A value under <prefix>/subnets that is not valid lease JSON, or a malformed key."""


class OutOfSubnetsError(FlannelError):
    """No free subnet is left between SubnetMin and SubnetMax."""


class StoreUnavailableError(FlannelError):
    """The lease store (etcd) could not be reached or timed out."""


class UnknownBackendError(FlannelError):
    """A backend type string that no registered backend handles."""
