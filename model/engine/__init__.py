"""The inference engine around the network: how requests become images and answers, step by step.

Owns the request and result records (`requests`), each item's conditioning (`conditioning`: its own prefix
K/V and edit latents), one MAR iteration over ragged rows (`sampler`), the stepping engine that admits, steps,
pauses and drops items between iterations (`running_set`), text decoding for understanding (`decoding`), and
the speed paths (`fast_paths`: compiled hot modules; `head_graph`: CUDA-graph replay of the diffusion head).
The trained components (`model.mar`, `model.llm`, `model.vae`, `model.diffloss`) and the thin
`model.inference` wrappers stay one level up; like them, it knows nothing of jobs, queues or databases.
"""
