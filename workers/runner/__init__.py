"""The batch runner: from a `run_batch` wake-up to finished jobs, over any transport.

Owns the batch loop (`batching`: claim, run one model call over every compatible job, OOM halving, bisecting
failures down to the bad items), the continuous loop over running sets (`continuous`: admit, step, retire and
drop between sampling steps) with its step scheduling (`step_policy`), lease renewal (`leases`), throttled progress and cancel checks (`progress`),
out-of-memory handling (`oom`), the background finishing `pipeline`, time `limits`, reading inputs (`inputs`),
writing results (`results`, `encoding`), the model seam (`engine`) and the worker's spans (`traces`). It talks
to jobs and objects only through `workers.transport`'s ports.
"""
