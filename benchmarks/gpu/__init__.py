"""The stages of ``benchmarks/gpu_check.sh``, each a plain Python entry point (no pytest collection):

    env       environment report, build of the extension (ptxas log), plan of the persistent kernels
    smoke     correctness of every kernel variant against a float64 oracle, graph capture, two streams
    sanitize  compute-sanitizer on rnnfast's kernels
    timings   per-step times against cuDNN
    pytests   the GPU test files under pytest

``python -m benchmarks.gpu.<stage> --help`` gives each one's arguments; ``common`` holds what they share.
"""
