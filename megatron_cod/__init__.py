"""megatron_cod: is my model actually using its depth? Tooling on Megatron-Core."""

__version__ = "0.1.0"

import warnings as _warnings

# megatron announces its CPU fallbacks at import in every process; on a CPU host they are expected.
for _msg in (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
    "Please use DTensor instead and we are deprecating ShardedTensor",
):
    _warnings.filterwarnings("ignore", message=_msg)
