"""Errors a user can fix. The CLI prints them without a stack trace; the
gateway turns them into 4xx answers; workers record them as a job's error."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing file, an invalid spec: the message says what to fix."""


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
