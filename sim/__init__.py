"""A simulated GPU serving node: NVML-like GPUs and vLLM-like engines with /metrics.

Start at ``sim.node.SimulatedNode.create``; docs/SIMULATOR.md has the model and its sources.
"""
