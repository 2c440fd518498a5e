"""Checks that run instead of a job (`csmoe-check`): today `cuda`, a config's GPU code path
driven on any machine (cuda_check.py, with cuda_runtime.py, emulated_cuda.py,
logical_devices.py, emulated_nccl.py, host_syncs.py, where.py). Imported by no other room."""
