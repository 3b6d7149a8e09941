"""numaemu's runtime side: scenario files, the runners and the command line.

For now the in-process backend (``cluster.runner_local``) drives an
``emulator.Machine``; the Ray backend comes later.
"""

__version__ = "0.1.0"
