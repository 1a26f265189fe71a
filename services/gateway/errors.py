"""Errors the gateway turns into clear HTTP answers (never a stack trace).
``ApiError`` and the prediction backends' errors live in the library
(``incept.errors``, ``incept.serving.errors``); the gateway's own are here."""

from __future__ import annotations

from incept.errors import ApiError, NotFound
from incept.serving.errors import BackendUnavailable, BadImage, ModelNotFound

__all__ = ["ApiError", "BackendUnavailable", "BadImage", "Conflict", "ModelNotFound", "NotFound",
           "TooLarge", "UnsupportedMedia"]


class Conflict(ApiError):
    status_code = 409


class TooLarge(ApiError):
    status_code = 413


class UnsupportedMedia(ApiError):
    status_code = 415
