"""Errors a user can fix. The CLI prints them without a stack trace; the
gateway turns them into 4xx answers; workers record them as a job's error."""


class UserError(Exception):
    """Bad input, a missing file, an invalid spec: the message says what to fix."""
