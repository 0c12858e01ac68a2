"""Skywork UniPic-1 (1.5B): the network, its samplers and the batched inference engine (`model.inference`).

Knows nothing of jobs, queues, databases or HTTP; the workers, the CLI and the benchmarks import it.
"""
