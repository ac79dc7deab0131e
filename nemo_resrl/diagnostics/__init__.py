"""Checks of a machine for the training stack (``device_check``: run by ``tools/gpu_check.sh``)."""
