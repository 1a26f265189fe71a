"""Errors the gateway turns into clear HTTP answers (never a stack trace)."""

from __future__ import annotations

from incept.errors import UserError


class ApiError(UserError):
    """An error with its HTTP status; ``headers`` go out with the answer."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None,
                 headers: dict[str, str] | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        self.problems = problems


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class TooLarge(ApiError):
    status_code = 413


class UnsupportedMedia(ApiError):
    status_code = 415


class BadImage(ApiError):
    status_code = 400


class ModelNotFound(NotFound):
    pass


class BackendUnavailable(ApiError):
    """The prediction backend (TF Serving, or a model still loading) cannot answer now."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
