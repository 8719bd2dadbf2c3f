"""The exceptions datago raises: one small tree rooted at DatagoError."""

from __future__ import annotations


class DatagoError(Exception):
    """Base class of every error datago raises on purpose."""


class ConfigError(DatagoError, ValueError):
    """The configuration is invalid; the message starts with the key at fault
    (e.g. ``image_config.default_image_size: ...``)."""


class SourceError(DatagoError, RuntimeError):
    """The source failed as a whole: unreadable root, every file failed, or
    more errors than ``max_error_fraction`` allows. The message names the
    cause and an example path."""


class AuthError(SourceError):
    """The server refused the credentials (a Dataroom page answered 403):
    the message names the URL and the server's ``detail``. Check
    ``DATAROOM_API_KEY``."""


class SampleTimeoutError(SourceError, TimeoutError):
    """No sample arrived within ``timeout_s``: the message names what the
    pass was waiting for (the listing, or the item due next and whether a
    worker holds it). The pass is stopped; ``start()`` begins the next one."""


__all__ = ["DatagoError", "ConfigError", "SourceError", "AuthError", "SampleTimeoutError"]
