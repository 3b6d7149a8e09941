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
    """

    def __init__(self, message: str, *, file: str = "", key: str = "", problem: str = ""):
        super().__init__(message)
        self.file = file
        self.key = key
        self.problem = problem


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


class WorkloadSpec(_Strict):
    node: int = Field(ge=0)
    processes: int = Field(1, ge=1)
    pages: int = Field(ge=1)
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
    seed: int = 0
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


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("~"):
            continue  # a union tag, not a key
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _from_validation_error(path: str, exc: ValidationError) -> ScenarioError:
    lines = []
    first_key = first_problem = ""
    for err in exc.errors(include_url=False):
        key, problem = _dotted(tuple(err["loc"])), _problem(err)
        if not lines:
            first_key, first_problem = key, problem
        line = f"{path}: {key}: {problem}"
        if line not in lines:
            lines.append(line)
    message = lines[0]
    if len(lines) > 1:
        message += "".join(f"\n{line}" for line in lines[1:])
    return ScenarioError(message, file=path, key=first_key, problem=first_problem)


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

def build_machine(spec: MachineSpec, path: str = "<scenario>"):
    """``Machine.from_config`` on the [machine] table; its ValueError (which
    names the key) becomes a ScenarioError prefixed with the file name."""
    from emulator import Machine  # the model; imported late so validation errors need no model

    config = spec.config()
    try:
        return Machine.from_config(config)
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
        problem = problem or text
        raise ScenarioError(f"{path}: {key}: {problem}", file=path, key=key, problem=problem) from None


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
        built = build_machine(scenario.machine, path)
        nr_nodes = int(built.nr_nodes)
        for i, wl in enumerate(scenario.workload):
            if wl.threads > wl.pages:
                key, problem = f"workload[{i}].threads", f"{wl.threads} threads for {wl.pages} pages: at most one per page"
                raise ScenarioError(f"{path}: {key}: {problem}", file=path, key=key, problem=problem)
        if scenario.swapoff.every and not built.k.swap.nslots:
            key, problem = "swapoff.every", "the machine has no swap device (machine.swap_pages = 0)"
            raise ScenarioError(f"{path}: {key}: {problem}", file=path, key=key, problem=problem)
        nodes = [(f"workload[{i}].node", wl.node) for i, wl in enumerate(scenario.workload)]
        nodes += [("migration.target", scenario.migration.target), ("reclaim.node", scenario.reclaim.node)]
        for key, node in nodes:
            if node is not None and node >= nr_nodes:
                problem = f"node {node} does not exist (the machine has {nr_nodes} nodes: 0..{nr_nodes - 1})"
                raise ScenarioError(f"{path}: {key}: {problem}", file=path, key=key, problem=problem)
        scenario._machine = built
    return scenario


def with_overrides(path: str, overrides) -> str:
    """How a run names its scenario: the file and the --set it changed it with."""
    return path + "".join(f" --set {o}" for o in overrides)


def apply_overrides(data: dict[str, Any], sets: list[str] | tuple[str, ...], path: str) -> None:
    """``--set KEY=VALUE`` on the parsed file, before it is validated: KEY is
    dotted (``machine.policy``, ``run.operations``, ``workload.0.pages``: an
    array of tables takes an index), VALUE a TOML value, a bare word being a
    string (``machine.policy=migentry``). So one file serves a comparison of
    designs or sizes without copies that drift apart."""
    for item in sets:
        key, eq, text = item.partition("=")
        key = key.strip()

        def fail(problem: str) -> None:
            raise ScenarioError(f"{path}: --set {item}: {problem}", file=path, key=key, problem=problem)
        if not eq or not key:
            fail("expected KEY=VALUE (for example machine.policy=migentry)")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()        # a bare word: a string
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            here, last = ".".join(parts[:i + 1]), i == len(parts) - 1
            if isinstance(node, list):              # an array of tables: an entry's index, then its key
                if not part.isdigit() or int(part) >= len(node):
                    fail(f"{here}: no such entry ({'.'.join(parts[:i])} has {len(node)}: 0..{len(node) - 1})")
                if last:
                    fail(f"{here} is a table: set a key of it ({here}.KEY)")
                node = node[int(part)]
            elif not isinstance(node, dict):
                fail(f"{'.'.join(parts[:i])} is a value, not a table")
            elif last:
                if isinstance(node.get(part), list):
                    fail(f"{here} is an array of tables: set a key of an entry ({here}.0.KEY)")
                node[part] = value
            else:
                node = node.setdefault(part, {})


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
        table = exc.key.replace("[", ".").split(".")[0]     # an override of the same table may be the cause
        mine = [o for o in overrides if table and o.partition("=")[0].strip().split(".")[0] == table]
        if mine:
            raise ScenarioError(f"{exc} (with --set {mine[-1]})", file=exc.file, key=exc.key,
                                problem=exc.problem) from None
        raise
    scenario._overrides = tuple(overrides)
    return scenario
