"""The package's layout: no function over 60 lines, no file over 400, no import cycle
(function-level imports and ``importlib.import_module("mergekit_cabs...")`` count), no host
(MergeKit, mergekitty) imported outside ``hosts/``, and the kernels' one-way flow (rules <-
torch path, rules <- compiled path, dispatch -> both; nothing outside the kernels)."""

import ast
from pathlib import Path


import mergekit_cabs
from mergekit_cabs.hosts import HOSTS

PACKAGE_DIR = Path(mergekit_cabs.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
HOST_PACKAGES = {host.package for host in HOSTS}
ADAPTERS = "mergekit_cabs.hosts"
KERNELS = "mergekit_cabs.kernels"
TORCH_PATH = {f"{KERNELS}.{name}" for name in ("masks", "combine", "per_tensor", "torch_path")}
COMPILED = f"{KERNELS}.compiled"  # a package: its entry, common, nm, per_tensor


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def long_functions(modules: dict[str, Path], limit: int) -> list[str]:
    """``module.qualified.name: N lines (file:line)`` for every function (methods and nested
    functions included) whose ``def`` line to last line spans more than ``limit`` lines."""
    found = []

    def visit(node: ast.AST, module: str, path: Path, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.lineno + 1
                if lines > limit:
                    found.append(f"{module}.{name[:-1]}: {lines} lines ({path.name}:{child.lineno})")
            visit(child, module, path, name)

    for module, path in modules.items():
        visit(ast.parse(path.read_text()), module, path, "")
    return found


def long_files(modules: dict[str, Path], limit: int) -> list[str]:
    """``module: N lines`` for every file of more than ``limit`` lines."""
    counts = {module: len(path.read_text().splitlines()) for module, path in modules.items()}
    return [f"{module}: {lines} lines" for module, lines in counts.items() if lines > limit]


def absolute_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``, at any depth: ``import a.b``,
    ``from a.b import c`` and ``importlib.import_module`` of a string literal."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def host_imports(modules: dict[str, Path], packages: set[str], allowed: str) -> list[str]:
    """``module:line imports name`` for every import of a host package by a module that is not
    ``allowed`` or under it."""
    return [f"{module}:{line} imports {name}" for module, path in modules.items()
            if module != allowed and not module.startswith(allowed + ".")
            for line, name in absolute_imports(ast.parse(path.read_text()))
            if name.split(".")[0] in packages]


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its file: ``import a.b``,
    ``from a import b`` (the submodule ``a.b`` if it is one, else ``a``), relative imports,
    and ``importlib.import_module`` of a string literal."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets.add(node.args[0].value)
    return {t for t in targets if t in modules and t != module}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {module: imported_modules(module, path, modules) for module, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules, each as one cycle through it
    (``a -> b -> a``), found by Tarjan's algorithm."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_through(group, graph) for group in groups]


def cycle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & set(group)):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")


def test_no_function_in_the_package_runs_past_60_lines():
    offenders = long_functions(module_files(PACKAGE_DIR), MAX_FUNCTION_LINES)
    assert not offenders, "split these into named pieces:\n" + "\n".join(offenders)


def test_no_file_of_the_package_runs_past_400_lines():
    offenders = long_files(module_files(PACKAGE_DIR), MAX_FILE_LINES)
    assert not offenders, "split these into modules of one job each:\n" + "\n".join(offenders)


def test_no_module_outside_hosts_imports_a_host():
    offenders = host_imports(module_files(PACKAGE_DIR), HOST_PACKAGES, ADAPTERS)
    assert not offenders, "move these into an adapter under hosts/:\n" + "\n".join(offenders)


def test_the_package_import_graph_has_no_cycle():
    cycles = import_cycles(import_graph(module_files(PACKAGE_DIR)))
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_kernels_import_nothing_of_the_package_outside_the_kernels():
    graph = import_graph(module_files(PACKAGE_DIR))
    outside = {f"{module} -> {target}" for module, targets in graph.items()
               if module.startswith(KERNELS) for target in targets if not target.startswith(KERNELS)}
    assert not outside, sorted(outside)


def test_the_rules_leaf_imports_nothing_of_ours():
    assert import_graph(module_files(PACKAGE_DIR))[f"{KERNELS}.rules"] == set()


def test_the_torch_and_compiled_paths_meet_only_in_rules_and_the_dispatch():
    graph = import_graph(module_files(PACKAGE_DIR))
    compiled = {module for module in graph if module.startswith(COMPILED)}
    assert set().union(*(graph[module] for module in compiled)) <= compiled | {f"{KERNELS}.rules"}
    assert not any(graph[module] & compiled for module in TORCH_PATH)
    assert {COMPILED, f"{KERNELS}.torch_path"} <= graph[f"{KERNELS}.dispatch"]


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_cycle_check_sees_function_level_relative_and_importlib_imports(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",
        "b.py": "from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "import importlib\nM = importlib.import_module('pkg.a')\n",
        "d.py": "import pkg.a\n",
    })
    assert import_cycles(import_graph(module_files(package))) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_the_length_check_names_a_long_nested_function(tmp_path):
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    package = write_package(tmp_path, {"__init__.py": "", "m.py": f"class C:\n    def f(self):\n{body}"})
    assert long_functions(module_files(package), MAX_FUNCTION_LINES) == [
        f"pkg.m.C.f: {MAX_FUNCTION_LINES + 1} lines (m.py:2)"]


def test_the_host_import_check_sees_module_function_and_importlib_imports_outside_hosts(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "import mergekit.plan\nimport mergekit_cabs\n",
        "b.py": "def f():\n    from mergekitty.merge import run_merge\n",
        "c.py": "import importlib\nM = importlib.import_module('mergekit')\n",
        "hosts/__init__.py": "",
        "hosts/adapter.py": "from mergekit import merge_methods\n",
    })
    assert host_imports(module_files(package), {"mergekit", "mergekitty"}, "pkg.hosts") == [
        "pkg.a:1 imports mergekit.plan", "pkg.b:2 imports mergekitty.merge", "pkg.c:2 imports mergekit"]


def test_the_file_length_check_names_a_long_file(tmp_path):
    package = write_package(tmp_path, {"__init__.py": "", "m.py": "x = 1\n" * (MAX_FILE_LINES + 1)})
    assert long_files(module_files(package), MAX_FILE_LINES) == [f"pkg.m: {MAX_FILE_LINES + 1} lines"]
