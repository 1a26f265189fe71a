"""Model zoo: ``build(name, num_classes)`` and slim checkpoint loading."""

from incept.nets.factory import (
    NETS,
    NetInfo,
    build,
    layers_under,
    net_info,
    net_names,
    register,
    slim_variables,
    variables_under,
)
from incept.nets.slim_checkpoint import LoadReport, SlimCheckpointError, load_slim_checkpoint

__all__ = [
    "NETS",
    "LoadReport",
    "NetInfo",
    "SlimCheckpointError",
    "build",
    "layers_under",
    "load_slim_checkpoint",
    "net_info",
    "net_names",
    "register",
    "slim_variables",
    "variables_under",
]
