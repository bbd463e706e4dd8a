"""Pipelines: drive the kernels and models over io one video at a time, and hand per-video tasks to :mod:`liftvid.jobs`."""
