"""Scenario files: TOML, validated with pydantic, errors that name file and key.

A scenario describes one experiment::

    [machine]          # exactly the keys of emulator.Machine.from_config
    [[workload]]       # one or more groups of processes touching memory
    [migration]        # optional: rebalance every K operations
    [run]              # how many operations, and the workload seed

Every problem is reported as a :class:`ScenarioError` whose message reads
``<file>: <dotted key>: <problem>``, for example
``examples/x.toml: machine.policy: must be one of swapcache, migcache, migentry``.
Syntax errors name the line instead of the key.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
)

POLICIES = ("swapcache", "migcache", "migentry")
PAYLOADS = ("token", "bytes")
PATTERNS = ("sequential", "uniform", "zipf")
MIGRATION_MODES = ("move_pages", "migrate_pages", "hot")


class ScenarioError(Exception):
    """A scenario file that cannot be read, parsed or validated.

    ``str(err)`` is the complete message, ``<file>: <key>: <problem>``.
    ``lines`` pairs each line of it with the keys its problem depends on, so
    that load_scenario can name, on that line, the --set that changed one of
    them (and no other).
    """

    def __init__(self, message: str, *, file: str = "", key: str = "", problem: str = "",
                 keys: tuple[str, ...] = (), lines: tuple[tuple[tuple[str, ...], str], ...] = ()):
        super().__init__(message)
        self.file = file
        self.key = key
        self.problem = problem
        self.lines = lines or ((keys or ((key,) if key else ()), message),)


def _error(path: str, key: str, problem: str, *also: str) -> ScenarioError:
    """``<file>: <key>: <problem>``; ``also``: other keys the problem depends on."""
    return ScenarioError(f"{path}: {key}: {problem}", file=path, key=key, problem=problem, keys=(key, *also))


# --------------------------------------------------------------------------
# The schema.  strict=True: TOML values are typed, so "4" is not an integer
# and true is not a number.  extra="forbid": a misspelt key is an error.

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NodeSpec(_Strict):
    frames: int


def _nodes_kind(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return "~int"
    if isinstance(value, list):
        return "~list"
    return None


# Tags of the union below start with "~" and are stripped from error locations.
NodesField = Annotated[
    Union[Annotated[int, Tag("~int")], Annotated[list[NodeSpec], Tag("~list")]],
    Discriminator(
        _nodes_kind,
        custom_error_type="nodes_type",
        custom_error_message="must be an integer or a list of tables like {frames = N}",
    ),
]


class MachineSpec(_Strict):
    """The [machine] table.  Types and choices are checked here; values
    (ranges, powers of two, matrix shapes) by ``Machine.from_config``.
    Keys left out take the model's defaults."""

    nodes: NodesField = 1
    frames_per_node: int = 1024
    swap_pages: int = 0
    page_size: int = 4096
    policy: Literal["swapcache", "migcache", "migentry"] = "migentry"
    payload: Literal["token", "bytes"] = "token"
    seed: int = 0
    distances: list[list[int]] | None = None

    def config(self) -> dict[str, Any]:
        """The keys written in the file, as ``Machine.from_config`` takes them."""
        return self.model_dump(exclude_unset=True)


# A process maps its workload's pages once, at vpn emulator.mm.MMAP_BASE_VPN
# (0x10000), and the model's mmap refuses a mapping that reaches vpn 2**31
# (ENOMEM "address space exhausted", emulator/machine.py): a larger pages is
# refused here, naming the key, rather than when the run starts.
MMAP_BASE_VPN = 0x10000
MAX_WORKLOAD_PAGES = (1 << 31) - MMAP_BASE_VPN - 1


class WorkloadSpec(_Strict):
    node: int = Field(ge=0)
    processes: int = Field(1, ge=1)
    pages: int = Field(ge=1, le=MAX_WORKLOAD_PAGES)
    shared: bool = False
    pattern: Literal["sequential", "uniform", "zipf"] = "uniform"
    zipf_s: float = Field(1.2, gt=1)
    write_ratio: float = Field(0.5, ge=0, le=1)
    batch: int = Field(256, ge=1)
    threads: int = Field(1, ge=1)
    fork_every: int = Field(0, ge=0)


class MigrationSpec(_Strict):
    every: int = Field(0, ge=0)
    mode: Literal["move_pages", "migrate_pages", "hot"] = "move_pages"
    target: int | None = Field(None, ge=0)


class ReclaimSpec(_Strict):
    every: int = Field(0, ge=0)
    pages: int = Field(64, ge=1)
    node: int | None = Field(None, ge=0)


class SwapoffSpec(_Strict):
    every: int = Field(0, ge=0)


class RunSpec(_Strict):
    operations: int = Field(ge=0)
    seconds: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, le=(1 << 63) - 1)     # numpy's generators take no negative seed; as machine.seed
    stress: bool = False
    check_every: int | None = Field(None, ge=1)


class Scenario(_Strict):
    machine: MachineSpec = Field(default_factory=MachineSpec)
    workload: list[WorkloadSpec] = Field(min_length=1)
    migration: MigrationSpec = Field(default_factory=MigrationSpec)
    reclaim: ReclaimSpec = Field(default_factory=ReclaimSpec)
    swapoff: SwapoffSpec = Field(default_factory=SwapoffSpec)
    run: RunSpec

    _path: str = PrivateAttr("<scenario>")
    _machine: Any = PrivateAttr(None)
    _overrides: tuple[str, ...] = PrivateAttr(())

    @property
    def path(self) -> str:
        return self._path

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set KEY=VALUE`` this run changed the file's values with."""
        return self._overrides

    def take_machine(self):
        """The machine this scenario describes.

        The first call hands over the Machine built while validating (so a
        large machine is not allocated twice); later calls build a new one.
        """
        machine, self._machine = self._machine, None
        if machine is None:
            machine = build_machine(self.machine, self._path)
        return machine


# --------------------------------------------------------------------------
# Error messages.

_TOML_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _describe(value: Any) -> str:
    for typ, name in _TOML_TYPES.items():
        if isinstance(value, typ):
            if typ in (dict, list):
                return name
            return f"{name} ({value!r})"
    return type(value).__name__


def _choices(expected: str) -> str:
    # pydantic's "'a', 'b' or 'c'" -> "a, b, c"
    return ", ".join(re.findall(r"'([^']*)'", expected))


def _problem(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {_choices(str(ctx.get('expected', '')))} (got {value!r})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, not {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {_describe(value)}"
    if kind in ("list_type",):
        return f"must be an array, not {_describe(value)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a table, not {_describe(value)}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']} (got {value!r})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']} (got {value!r})"
    if kind == "less_than":
        return f"must be < {ctx['lt']} (got {value!r})"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']} (got {value!r})"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "at least one entry is required"
    msg = str(err.get("msg", kind))
    return msg[:1].lower() + msg[1:]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("~"):
            continue  # a union tag, not a key
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a key TOML would quote ("" = 1, "a.b" = 1) is shown quoted, as it was written
            text = str(part) if _BARE_KEY.fullmatch(str(part)) else json.dumps(str(part))
            out += ("." if out else "") + text
    return out or "(top level)"


def _from_validation_error(path: str, exc: ValidationError) -> ScenarioError:
    lines: list[tuple[tuple[str, ...], str]] = []
    first_key = first_problem = ""
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("~")))
        key, problem = _dotted(loc), _problem(err)
        if not lines:
            first_key, first_problem = key, problem
        line = f"{path}: {key}: {problem}"
        if line not in [text for _, text in lines]:
            lines.append(((".".join(str(p) for p in loc),), line))
    message = "\n".join(text for _, text in lines)
    return ScenarioError(message, file=path, key=first_key, problem=first_problem, lines=tuple(lines))


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _from_toml_error(path: str, exc: tomllib.TOMLDecodeError) -> ScenarioError:
    text = str(exc)
    match = _TOML_POS.search(text)
    if match:
        where = f"line {match.group(1)}, column {match.group(2)}"
        text = text[: match.start()]
    elif text.endswith("(at end of document)"):
        where = "end of file"
        text = text[: -len("(at end of document)")].rstrip()
    else:
        where = "syntax"
    problem = f"invalid TOML: {text[:1].lower() + text[1:]}"
    return ScenarioError(f"{path}: {where}: {problem}", file=path, key=where, problem=problem)


# --------------------------------------------------------------------------
# Loading.

GiB = 1 << 30


def host_memory() -> int | None:
    """Bytes of memory this process can have: the host's RAM, or its cgroup's
    limit when lower (a container). None when neither can be read.

    RAM rather than what is free now: the model's arrays are backed as a run
    touches them, so what is free at load time says little about whether the
    run fits; a scenario larger than the RAM itself can never be backed."""
    try:
        total: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    if total is not None and total <= 0:
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            total = int(text) if total is None else min(total, int(text))
    return total


def _array_bytes(obj: Any) -> int:
    import numpy as np
    return sum(a.nbytes for a in vars(obj).values() if isinstance(a, np.ndarray))


def _bytes_per_unit(make, page_size: int, payload: str) -> int:
    """Bytes the model's arrays take per frame (or swap slot), measured on
    tiny instances (at 1 and 2 units, with 64-byte pages) so the estimate
    follows the model's arrays as they change."""
    per = _array_bytes(make(2, 64, payload)) - _array_bytes(make(1, 64, payload))
    return per + (page_size - 64 if payload == "bytes" else 0)


def memory_estimate(topo: Any, workloads: list[WorkloadSpec] | tuple[WorkloadSpec, ...] = ()
                    ) -> list[tuple[int, str, tuple[str, ...]]]:
    """What the scenario's arrays take, largest first: (bytes, what drives
    it, as ``key = value`` text, and those keys). The machine's frame tables
    and swap device (all allocated when it is built) and, per workload, its
    processes' page tables (8 bytes a page), the shadow of what was written
    (9 bytes a page of each mapping) and a zipf pattern's table (16)."""
    from emulator.frames import Frames
    from emulator.swap import SwapDevice

    ps, payload = topo.page_size, topo.payload
    each = f"{payload!r} payload" if payload == "token" else f"'bytes' payload of {ps}-byte pages"
    pay_keys = ("machine.payload", "machine.page_size") if payload == "bytes" else ()
    per_frame = _bytes_per_unit(lambda n, p, pl: Frames(0, n, p, pl), ps, payload)
    per_slot = _bytes_per_unit(lambda n, p, pl: SwapDevice(n, p, pl), ps, payload)
    frames = sum(topo.frames)
    if len(set(topo.frames)) == 1:
        what = f"machine.nodes = {topo.nr_nodes} x machine.frames_per_node = {topo.frames[0]}"
        keys: tuple[str, ...] = ("machine.frames_per_node", "machine.nodes")
    else:
        what, keys = f"machine.nodes: {frames} frames in all", ("machine.nodes",)
    parts = [(frames * per_frame, f"{what} ({per_frame} bytes a frame with the {each})", keys + pay_keys),
             ((topo.swap_pages + 1) * per_slot,
              f"machine.swap_pages = {topo.swap_pages} ({per_slot} bytes a slot with the {each})",
              ("machine.swap_pages",) + pay_keys)]
    for i, wl in enumerate(workloads):
        mappings = 1 if wl.shared else wl.processes
        per_page = 8 * wl.processes + 9 * mappings + (16 if wl.pattern == "zipf" else 0)
        parts.append((wl.pages * per_page,
                      f"workload[{i}].pages = {wl.pages} x workload[{i}].processes = {wl.processes} "
                      f"({per_page} bytes a page)", (f"workload[{i}].pages", f"workload[{i}].processes")))
    return sorted(parts, key=lambda part: -part[0])


def _too_big(path: str, parts: list[tuple[int, str, tuple[str, ...]]], problem: str) -> ScenarioError:
    """``problem`` about memory, naming the largest parts of ``parts`` (those
    of at least a tenth of the total) and the keys that drive them."""
    need = sum(n for n, _, _ in parts)
    big = [part for part in parts if part[0] * 10 >= need] or parts[:1]
    problem = f"{problem}: " + "; ".join(f"{what}: {n / GiB:.1f} GiB" for n, what, _ in big)
    keys = tuple(dict.fromkeys(k for _, _, ks in big for k in ks))
    return _error(path, keys[0], problem, *keys[1:])


def check_memory(path: str, topo: Any, workloads: list[WorkloadSpec] | tuple[WorkloadSpec, ...] = ()) -> None:
    """Refuse, before anything is allocated, a scenario whose arrays need
    more memory than the host has (a MemoryError, or the OOM killer, later)."""
    have = host_memory()
    if have is None:
        return
    parts = memory_estimate(topo, workloads)
    need = sum(n for n, _, _ in parts)
    if need > have:
        raise _too_big(path, parts, f"the scenario needs about {need / GiB:.1f} GiB of memory, "
                                    f"more than this host's {have / GiB:.1f} GiB")


def _topology(spec: MachineSpec, path: str):
    """``Topology.from_config`` on the [machine] table (it checks values and
    allocates nothing); its ValueError (which names the key) becomes a
    ScenarioError prefixed with the file name."""
    from emulator import Topology  # the model; imported late so validation errors need no model

    try:
        return Topology.from_config(spec.config())
    except ValueError as exc:
        text = str(exc).strip() or "invalid machine configuration"
        head, sep, rest = text.partition(":")
        head = head.strip()
        if sep and (head == "machine" or head.startswith("machine.")):
            key, problem = head, rest.strip()
        elif sep and head in MachineSpec.model_fields:
            key, problem = f"machine.{head}", rest.strip()
        else:
            key, problem = "machine", text
        raise _error(path, key, problem or text) from None


def build_machine(spec: MachineSpec, path: str = "<scenario>",
                  workloads: list[WorkloadSpec] | tuple[WorkloadSpec, ...] = ()):
    """The machine of the [machine] table, after check_memory (with the
    ``workloads`` that will run on it). A MemoryError all the same (other
    processes took the memory) is reported as check_memory's error is."""
    from emulator import Machine

    topo = _topology(spec, path)
    check_memory(path, topo, workloads)
    try:
        return Machine(topo)
    except MemoryError:
        parts = memory_estimate(topo)
        need = sum(n for n, _, _ in parts)
        raise _too_big(path, parts, f"out of memory allocating the machine's arrays "
                                    f"(about {need / GiB:.1f} GiB)") from None


def parse_scenario(data: dict[str, Any], path: str = "<scenario>", *, machine: bool = True) -> Scenario:
    """Validate an already-parsed TOML document.

    With ``machine=True`` (the default) the [machine] table is also checked by
    ``Machine.from_config`` and the cross-table rules (a workload's node
    exists) are applied against the built machine.
    """
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(path, exc) from None
    scenario._path = path
    if machine:
        built = build_machine(scenario.machine, path, scenario.workload)
        nr_nodes = int(built.nr_nodes)
        for i, wl in enumerate(scenario.workload):
            if wl.threads > wl.pages:
                raise _error(path, f"workload[{i}].threads",
                             f"{wl.threads} threads for {wl.pages} pages: at most one per page", f"workload[{i}].pages")
        if scenario.swapoff.every and not built.k.swap.nslots:
            raise _error(path, "swapoff.every", "the machine has no swap device (machine.swap_pages = 0)",
                         "machine.swap_pages")
        nodes = [(f"workload[{i}].node", wl.node) for i, wl in enumerate(scenario.workload)]
        nodes += [("migration.target", scenario.migration.target), ("reclaim.node", scenario.reclaim.node)]
        for key, node in nodes:
            if node is not None and node >= nr_nodes:
                raise _error(path, key, f"node {node} does not exist (the machine has {nr_nodes} nodes: "
                                        f"0..{nr_nodes - 1})", "machine.nodes")
        scenario._machine = built
    return scenario


def with_overrides(path: str, overrides) -> str:
    """How a run names its scenario: the file and the --set it changed it with."""
    return path + "".join(f" --set {o}" for o in overrides)


def _override_key(item: str) -> tuple[str, ...]:
    """The dotted key of a ``--set KEY=VALUE``, as parts (TOML allows spaces around the dots)."""
    return tuple(part.strip() for part in item.partition("=")[0].split("."))


def _key_path(key: str) -> tuple[str, ...]:
    """``workload[0].pages`` (an error's key) as ``workload.0.pages`` (an override's), in parts."""
    return tuple(part for part in re.split(r"[.\[\]]+", key) if part)


def _touches(override: tuple[str, ...], key: tuple[str, ...]) -> bool:
    """Whether an override of ``override`` can be the cause of a problem at
    ``key``: one is the other or holds it (machine.distances.0.0 and
    machine.distances; workload.0 and workload.0.pages)."""
    n = min(len(override), len(key))
    return n > 0 and override[:n] == key[:n]


def apply_overrides(data: dict[str, Any], sets: list[str] | tuple[str, ...], path: str) -> None:
    """``--set KEY=VALUE`` on the parsed file, before it is validated: KEY is
    dotted (``machine.policy``, ``run.operations``, ``workload.0.pages``: an
    array takes an index, an array of tables an index then a key), VALUE a
    TOML value, a bare word being a string (``machine.policy=migentry``). So
    one file serves a comparison of designs or sizes without copies that
    drift apart."""
    for item in sets:
        key, eq, text = item.partition("=")
        key = key.strip()

        def fail(problem: str) -> None:
            raise ScenarioError(f"{path}: --set {item}: {problem}", file=path, key=key, problem=problem)
        if not eq or not key:
            fail("expected KEY=VALUE (for example machine.policy=migentry)")
        parts = _override_key(item)
        if not all(parts):
            fail(f"{key}: a dotted key has an empty part (for example machine.policy)")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()        # a bare word: a string
        node: Any = data
        for i, part in enumerate(parts):
            here, last = ".".join(parts[:i + 1]), i == len(parts) - 1
            if isinstance(node, list):              # an array: an entry's index (then a table's key)
                if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                    where = ".".join(parts[:i])
                    fail(f"{here}: no such entry ({where} has {len(node)}"
                         + (f": 0..{len(node) - 1})" if node else ")"))
                if last and isinstance(node[int(part)], dict):
                    fail(f"{here} is a table: set a key of it ({here}.KEY)")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif not isinstance(node, dict):
                fail(f"{'.'.join(parts[:i])} is a value, not a table")
            elif last:
                old = node.get(part)
                if isinstance(old, list) and old and all(isinstance(e, dict) for e in old):
                    fail(f"{here} is an array of tables: set a key of an entry ({here}.0.KEY)")
                node[part] = value
            elif part not in node and parts[i + 1].isascii() and parts[i + 1].isdigit():
                fail(f"{here}: not in the file, so it has no entry {parts[i + 1]} to set (set it whole: {here}=[...])")
            else:
                node = node.setdefault(part, {})


def _blame(exc: ScenarioError, overrides: tuple[str, ...]) -> ScenarioError:
    """``exc`` with, on each line, the --set that changed one of the keys
    that line's problem depends on: ``(with --set KEY=VALUE)``."""
    lines = []
    for keys, line in exc.lines:
        mine = {_override_key(o): o for o in overrides      # the last --set of a key is the one in effect
                if any(_touches(_override_key(o), _key_path(k)) for k in keys)}
        if mine:
            line += f" (with {' '.join(f'--set {o}' for o in mine.values())})"
        lines.append((keys, line))
    return ScenarioError("\n".join(line for _, line in lines), file=exc.file, key=exc.key, problem=exc.problem,
                         lines=tuple(lines))


def load_scenario(path: str | Path, *, machine: bool = True, overrides: tuple[str, ...] = ()) -> Scenario:
    """Read, parse and validate a scenario file, with ``overrides``
    (apply_overrides) applied first.  Raises ScenarioError."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        problem = f"cannot read the file: {exc.strerror or exc}"
        raise ScenarioError(f"{name}: {problem}", file=name, problem=problem) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start})"
        raise ScenarioError(f"{name}: {problem}", file=name, problem=problem) from None
    except tomllib.TOMLDecodeError as exc:
        raise _from_toml_error(name, exc) from None
    apply_overrides(data, overrides, name)
    try:
        scenario = parse_scenario(data, name, machine=machine)
    except ScenarioError as exc:
        raise _blame(exc, tuple(overrides)) from None
    scenario._overrides = tuple(overrides)
    return scenario
