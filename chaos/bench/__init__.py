"""Benchmarks: cli (`ringcast bench`, the verified fan-out / many-rooms / idle-memory
runs), history, router, control, compare_global (ring placement vs one global
channel) and redis_memory (Redis bytes per room and per kept message). Each prints
its numbers; docs/benchmarks.md records them.
"""
