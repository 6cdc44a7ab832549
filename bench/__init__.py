"""Benchmark: the in-process limit, the served pipeline and the stock KServe pattern, one run.

`python -m bench --model_dir model_repository --out bench-results` (what `make bench` runs).

Process layout, and why: the driver (this package's `driver`, `load`, `servers`) talks to the
servers over loopback with httpx and tritonclient.grpc, so it never imports kserve (the two
register the same protobuf package and cannot share a process). Everything that needs kserve or
torch runs as a child process: the servers, `python -m bench.limit` (the in-process limit) and
`python -m bench.hop` (the size of the internal gRPC request). The pure modules (`images`,
`stats`, `report`) import neither and are what the unit tests cover.
"""
