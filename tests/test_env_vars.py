"""Every environment variable the package reads is documented in README.md and .env.example.

The package's source is scanned with ``ast`` for reads of the environment: ``os.environ.get``
/ ``os.getenv`` / ``os.environ[...]`` / ``... in os.environ`` (through any alias of
``os.environ``), a helper that passes its parameter to one of those (its callers' literals
are collected), and a loop over a table (the table's names are collected: the trace-field
fallbacks of ``_metadata.py``). A read whose name the scan cannot work out fails the test,
so a new variable cannot slip past it by being computed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "revenium_ollama_transport"
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"

NAME = re.compile(r"[A-Z][A-Z0-9_]{2,}")
# Functions that read variables of their own: what calling one means the package reads.
INDIRECT = {
    "getproxies": ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
    "proxy_bypass": ("NO_PROXY",),
}
ENVIRON_METHODS = {"get", "pop", "setdefault", "__getitem__", "__contains__"}


@dataclass
class Scan:
    names: dict[str, set[str]] = field(default_factory=dict)  # name -> where it is read
    unresolved: list[str] = field(default_factory=list)  # reads the scan cannot name

    def add(self, name: str, where: str) -> None:
        self.names.setdefault(name, set()).add(where)


@dataclass(frozen=True)
class _Helper:
    """A function that reads the variable named by one of its parameters."""

    function: str
    index: int  # the parameter's position
    parameter: str


class _Module:
    """One source file: its parents map, its aliases of ``os``, ``os.environ`` and
    ``os.getenv``, and its module-level assignments."""

    def __init__(self, source: str, filename: str) -> None:
        self.filename = filename
        self.tree = ast.parse(source, filename)
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        self.os_names: set[str] = set()
        self.environ_names: set[str] = set()
        self.getenv_names: set[str] = set()
        self.indirect_names: dict[str, str] = {}  # local name -> INDIRECT key
        self.globals: dict[str, ast.expr] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "os":
                        self.os_names.add(alias.asname or "os")
            elif isinstance(node, ast.ImportFrom) and node.module in ("os", "urllib.request"):
                for alias in node.names:
                    local = alias.asname or alias.name
                    if node.module == "os" and alias.name == "environ":
                        self.environ_names.add(local)
                    elif node.module == "os" and alias.name == "getenv":
                        self.getenv_names.add(local)
                    elif alias.name in INDIRECT:
                        self.indirect_names[local] = alias.name
        # Aliases made by assignment (``environ = os.environ``), to a fixed point.
        changed = True
        while changed:
            changed = False
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Assign) and self.is_environ(node.value):
                    for target in node.targets:
                        if isinstance(target, ast.Name) and target.id not in self.environ_names:
                            self.environ_names.add(target.id)
                            changed = True
        for statement in self.tree.body:
            if isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        self.globals[target.id] = statement.value
            elif (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and statement.value is not None
            ):
                self.globals[statement.target.id] = statement.value

    def where(self, node: ast.AST) -> str:
        return f"{self.filename}:{getattr(node, 'lineno', '?')}"

    def is_os(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in self.os_names

    def is_environ(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.environ_names
        return isinstance(node, ast.Attribute) and node.attr == "environ" and self.is_os(node.value)

    def reads_a_variable(self, func: ast.expr) -> bool:
        """Whether calling ``func`` reads the variable its first argument names."""
        if isinstance(func, ast.Name):
            return func.id in self.getenv_names
        return isinstance(func, ast.Attribute) and (
            (func.attr in ENVIRON_METHODS and self.is_environ(func.value))
            or (func.attr == "getenv" and self.is_os(func.value))
        )

    def reads(self) -> Iterator[tuple[ast.AST, ast.expr]]:
        """(the read, the expression naming the variable) for each read of the environment."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and node.args:
                if self.reads_a_variable(node.func):
                    yield node, node.args[0]
            elif isinstance(node, ast.Subscript) and self.is_environ(node.value):
                yield node, node.slice
            elif (
                isinstance(node, ast.Compare)
                and len(node.ops) == 1
                and isinstance(node.ops[0], (ast.In, ast.NotIn))
                and self.is_environ(node.comparators[0])
            ):
                yield node, node.left

    def indirect_reads(self) -> Iterator[tuple[ast.AST, str]]:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in INDIRECT:
                yield node, func.attr
            elif isinstance(func, ast.Name) and func.id in self.indirect_names:
                yield node, self.indirect_names[func.id]

    def enclosing(self, node: ast.AST) -> Iterator[ast.AST]:
        while node in self.parent:
            node = self.parent[node]
            yield node

    def table_names(self, name: str, at: ast.AST, seen: frozenset[str] = frozenset()) -> set[str]:
        """The variable names a loop variable ``name`` can take: the upper-case string
        constants of the tables its loop (and the loops around it) iterate over."""
        if name in seen:
            return set()
        for scope in self.enclosing(at):
            if isinstance(scope, (ast.For, ast.AsyncFor, ast.comprehension)) and name in {
                n.id for n in ast.walk(scope.target) if isinstance(n, ast.Name)
            }:
                found: set[str] = set()
                for source in ast.walk(scope.iter):
                    if isinstance(source, ast.Name):
                        if source.id in self.globals:
                            found |= {
                                c.value
                                for c in ast.walk(self.globals[source.id])
                                if isinstance(c, ast.Constant)
                                and isinstance(c.value, str)
                                and NAME.fullmatch(c.value)
                            }
                        else:
                            found |= self.table_names(source.id, scope, seen | {name})
                    elif (
                        isinstance(source, ast.Constant)
                        and isinstance(source.value, str)
                        and NAME.fullmatch(source.value)
                    ):
                        found.add(source.value)
                return found
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                break
        return set()

    def helper(self, name: str, at: ast.AST) -> _Helper | None:
        """The function whose parameter ``name`` is, if the read is inside it."""
        for scope in self.enclosing(at):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = [*scope.args.posonlyargs, *scope.args.args, *scope.args.kwonlyargs]
                for index, argument in enumerate(arguments):
                    if argument.arg == name:
                        return _Helper(scope.name, index, name)
                return None
        return None


def _resolve(
    module: _Module, key: ast.expr, at: ast.AST, scan: Scan, helpers: list[tuple[_Helper, str]]
) -> None:
    where = module.where(at)
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        if NAME.fullmatch(key.value):
            scan.add(key.value, where)
        else:
            scan.unresolved.append(f"{where}: {key.value!r} is not an upper-case variable name")
        return
    if isinstance(key, ast.Name):
        helper = module.helper(key.id, at)
        tabled = module.table_names(key.id, at)
        if tabled:
            for name in tabled:
                scan.add(name, where)
            return
        if helper is not None:
            helpers.append((helper, where))
            return
    scan.unresolved.append(f"{where}: cannot tell which variable {ast.unparse(key)} names")


def scan_sources(sources: dict[str, str]) -> Scan:
    """Scans ``{filename: source}`` for the environment variables it reads."""
    scan = Scan()
    modules = [_Module(source, filename) for filename, source in sources.items()]
    helpers: list[tuple[_Helper, str]] = []
    for module in modules:
        for at, key in module.reads():
            _resolve(module, key, at, scan, helpers)
        for at, function in module.indirect_reads():
            for name in INDIRECT[function]:
                scan.add(name, module.where(at))
    # Helpers: the variables are what their callers pass; a caller that passes its own
    # parameter is a helper in turn.
    done: set[_Helper] = set()
    while helpers:
        helper, read_at = helpers.pop()
        if helper in done:
            continue
        done.add(helper)
        calls = 0
        for module in modules:
            for node in ast.walk(module.tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called != helper.function:
                    continue
                calls += 1
                given = [k.value for k in node.keywords if k.arg == helper.parameter]
                if helper.index < len(node.args):
                    given.append(node.args[helper.index])
                for key in given:
                    _resolve(module, key, node, scan, helpers)
        if not calls:
            scan.unresolved.append(
                f"{read_at}: {helper.function}() reads the variable its parameter "
                f"{helper.parameter!r} names, and nothing calls it"
            )
    return scan


def scan_package() -> Scan:
    return scan_sources(
        {
            str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
            for path in sorted(PACKAGE.rglob("*.py"))
        }
    )


SCAN = scan_package()
READ = sorted(SCAN.names)


def documented_in_readme(name: str) -> bool:
    return f"`{name}`" in README.read_text(encoding="utf-8")


def documented_in_env_example(name: str) -> bool:
    # An assignment, commented out or not: `NAME=value` or `# NAME=value`.
    pattern = rf"^[ \t]*(?:#[ \t]*)?{re.escape(name)}[ \t]*="
    return re.search(pattern, ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE) is not None


# --- the scan itself works ------------------------------------------------------------------


def test_the_scan_finds_the_known_reads() -> None:
    known = {
        # os.environ.get("...")
        "REVENIUM_METERING_API_KEY",
        "REVENIUM_METERING_BASE_URL",
        "REVENIUM_LOG_LEVEL",
        "REVENIUM_METERING_ENABLED",
        "REVENIUM_STRICT_METADATA",
        "OLLAMA_HOST",
        # os.environ["..."]
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # a helper's parameter: _float_env("REVENIUM_SHUTDOWN_TIMEOUT", ...)
        "REVENIUM_SHUTDOWN_TIMEOUT",
        # the table of trace-field fallbacks in _metadata.py
        "REVENIUM_ENVIRONMENT",
        "ENVIRONMENT",
        "DEPLOYMENT_ENV",
        "REVENIUM_REGION",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AZURE_REGION",
        "GCP_REGION",
        "GOOGLE_CLOUD_REGION",
        "REVENIUM_CREDENTIAL_ALIAS",
        "REVENIUM_TRACE_TYPE",
        "REVENIUM_TRACE_NAME",
        "REVENIUM_PARENT_TRANSACTION_ID",
        "REVENIUM_TRANSACTION_NAME",
        "REVENIUM_RETRY_NUMBER",
        # urllib.request.getproxies()
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    }
    assert known <= set(SCAN.names), f"not found: {sorted(known - set(SCAN.names))}"
    assert all(NAME.fullmatch(name) for name in SCAN.names)
    assert any("_metadata.py" in where for where in SCAN.names["GOOGLE_CLOUD_REGION"])


def test_every_read_of_the_environment_is_named() -> None:
    assert SCAN.unresolved == []


def test_the_scan_catches_new_reads_in_every_form() -> None:
    scan = scan_sources(
        {
            "a.py": """
import os
from os import environ as env, getenv

NAMES = ("NEW_TABLE_ONE", "NEW_TABLE_TWO")
TABLE = {"field": ("NEW_IN_DICT",)}

def _setting(variable, default=None):
    return os.environ.get(variable, default)

def _via(name):
    return _setting(name)

def settings():
    environ = os.environ
    values = [os.getenv("NEW_GETENV"), env.get("NEW_ALIAS"), os.environ["NEW_SUBSCRIPT"]]
    values.append("NEW_CONTAINS" in env)
    values.append(getenv("NEW_BARE_GETENV"))
    values.append(_setting("NEW_HELPER"))
    values.append(_setting(variable="NEW_KEYWORD"))
    values.append(_via("NEW_TWO_HOPS"))
    for name in NAMES:
        values.append(environ.get(name))
    for key, names in TABLE.items():
        for name in names:
            values.append(environ.get(name))
    return values
""",
            "b.py": """
import os
import urllib.request

def proxies():
    return urllib.request.getproxies()

def unknowable(prefix):
    return os.environ.get(prefix + "_SUFFIX")

def lowercase():
    return os.environ.get("http_proxy")
""",
        }
    )
    assert set(scan.names) == {
        "NEW_TABLE_ONE",
        "NEW_TABLE_TWO",
        "NEW_IN_DICT",
        "NEW_GETENV",
        "NEW_ALIAS",
        "NEW_SUBSCRIPT",
        "NEW_CONTAINS",
        "NEW_BARE_GETENV",
        "NEW_HELPER",
        "NEW_KEYWORD",
        "NEW_TWO_HOPS",
        *INDIRECT["getproxies"],
    }
    assert len(scan.unresolved) == 2
    assert any("prefix + '_SUFFIX'" in problem for problem in scan.unresolved)
    assert any("'http_proxy'" in problem for problem in scan.unresolved)


def test_an_undocumented_variable_would_fail() -> None:
    assert not documented_in_readme("REVENIUM_SOMETHING_NEW")
    assert not documented_in_env_example("REVENIUM_SOMETHING_NEW")
    # A name inside a longer one is not documentation of it.
    assert not documented_in_env_example("METERING_API_KEY")


# --- the documentation ------------------------------------------------------------------


@pytest.mark.parametrize("name", READ)
def test_the_variable_is_in_the_readme(name: str) -> None:
    where = ", ".join(sorted(SCAN.names[name]))
    assert documented_in_readme(name), f"{name} (read at {where}) is not in README.md"


@pytest.mark.parametrize("name", READ)
def test_the_variable_is_in_env_example(name: str) -> None:
    where = ", ".join(sorted(SCAN.names[name]))
    assert documented_in_env_example(name), f"{name} (read at {where}) is not in .env.example"
