"""incept: fine-tune Inception v4 on a folder of labelled photos, evaluate every
checkpoint, export the better ones and serve them.

The library every service imports: ``nets`` (model zoo), ``data`` (conversion and
TFRecord reading), ``preprocessing``, ``layout`` (paths on the shared volume),
``spec`` (the job spec), ``settings`` (one configuration class), ``jobstate`` and
``queues`` (what lives in Redis)."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One home for the version: pyproject.toml, read back from the installed metadata.
    __version__ = version("incept")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
