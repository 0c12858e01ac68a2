"""The device a model worker runs on: its health, its memory, and how much work fits.

Owns telling a broken device from a failing item (`health`), NVML memory and utilization (`nvml`), picking
image size and batch limits from free memory with the measured peak-memory table (`card_fit`,
`card_fit_table.json`), host memory reused between model calls (`host_memory`) and the back-off after a run of
failed messages (`streak`). It knows nothing of jobs.
"""
