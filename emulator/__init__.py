"""numaemu's model of Linux anonymous memory management across NUMA nodes.

Pure Python and numpy, deterministic, no Ray: the cluster runtime and the
race explorer drive the same operation coroutines (DESIGN.md principle 1).
"""
from .invariants import InvariantViolation
from .kernel import BUGS
from .machine import MOVE_PAGES_MAX, Machine
from .mm import (MPOL_BIND, MPOL_DEFAULT, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED, MPOL_F_NODE, MPOL_F_NUMA_BALANCING,
                 MPOL_F_RELATIVE_NODES, MPOL_F_STATIC_NODES, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_PREFERRED,
                 MPOL_PREFERRED_MANY)
from .move_pages import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, MPOL_MF_STRICT
from .topology import Topology

__all__ = ["Machine", "InvariantViolation", "Topology", "MPOL_MF_MOVE", "MPOL_MF_MOVE_ALL", "MPOL_MF_STRICT",
           "MPOL_DEFAULT", "MPOL_PREFERRED", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_LOCAL", "MPOL_PREFERRED_MANY",
           "MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES", "MPOL_F_NUMA_BALANCING",
           "MPOL_F_NODE", "MPOL_F_ADDR", "MPOL_F_MEMS_ALLOWED",
           "MOVE_PAGES_MAX", "BUGS"]
