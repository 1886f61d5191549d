"""Pure computations on measured numbers: statistics, vLLM's latency definitions, the
roofline floors, validity checks and latency points with their gains."""
