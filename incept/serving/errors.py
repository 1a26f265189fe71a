"""What a prediction backend can answer besides a prediction, with the HTTP
status the gateway gives it."""

from __future__ import annotations

from incept.errors import ApiError, NotFound


class BadImage(ApiError):
    status_code = 400


class ModelNotFound(NotFound):
    pass


class BackendUnavailable(ApiError):
    """The prediction backend (TF Serving, or a model still loading) cannot answer now."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
