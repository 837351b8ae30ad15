"""Where algorithms come from: the built-ins, and plug-ins from a file, a module or an installed package.

Everywhere an algorithm is named (``offbench run --algorithm``, a suite's ``[[algorithms]] name``,
``offbench algorithms check``), the name is resolved here, in this order:

1. a built-in name (``REGISTRY``);
2. the name of an installed package's entry point in the ``offbench.algorithms`` group
   (``[project.entry-points."offbench.algorithms"] awr = "my_package.awr"``);
3. a path to a Python file (it ends in ``.py`` or holds a path separator), relative to ``base`` (the
   suite file's folder) or the working directory;
4. an importable module (``my_package.awr``).

A plug-in's module declares ``ALGORITHM = Algorithm(...)``. No plug-in may declare the name of a built-in
or of an installed entry point other than itself, so one name means one algorithm in a results directory.

Resolution gives the :class:`Algorithm` and an :class:`AlgorithmSource`: plain, picklable data saying
where the code came from, with a digest of that code, enough for :func:`load` to load the very same code
again in another process or on another machine (a file plug-in carries its source text). The digest
becomes part of the job's code version (``bench/train.py``), so editing a plug-in is a change of code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
import types
from functools import cache
from pathlib import Path
from typing import Literal

from offbench.algorithms import Algorithm
from offbench.hints import one_line, suggest

REGISTRY: dict[str, str] = {
    "bc": "offbench.algorithms.bc",
    "td3bc": "offbench.algorithms.td3bc",
    "iql": "offbench.algorithms.iql",
    "a2pr": "offbench.algorithms.a2pr",
    "prdc": "offbench.algorithms.prdc",
    "cql": "offbench.algorithms.cql",
    "dqc": "offbench.algorithms.dqc",
}
ENTRY_POINT_GROUP = "offbench.algorithms"
ATTRIBUTE = "ALGORITHM"
# An algorithm's name becomes part of job and file names: plain characters only.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

Kind = Literal["builtin", "file", "module", "entry_point"]


class UnknownAlgorithmError(ValueError):
    """A name that resolves to no algorithm, or a plug-in that cannot be loaded; the message is one line
    naming the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class AlgorithmSource:
    """Where an algorithm's code came from: what :func:`load` needs to load it again, anywhere.

    - ``builtin``: ``module`` is offbench's own module; offbench's code version covers it (no digest).
    - ``file``: ``code`` is the file's text and ``digest`` its sha256; ``path`` is where it was read
      (informational: a worker loads ``code``, it never reads ``path``). ``module`` is the name it is
      loaded under, ``offbench_plugin_<stem>_<digest[:12]>``, the same in every process.
    - ``module`` / ``entry_point``: ``module`` is imported; ``digest`` covers the files of its top-level
      package (or its single file) and the version of the distribution that installed it, so a worker
      with other code installed refuses the job. ``distribution``/``version`` name that distribution.
    """

    kind: Kind
    name: str  # the declared ``ALGORITHM.name``
    module: str
    attribute: str = ATTRIBUTE
    digest: str | None = None
    path: str | None = None
    distribution: str | None = None
    version: str | None = None
    code: str | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def origin(self) -> str:
        """One line for rows and listings: ``builtin``, ``file:<path>``, ``module:<name>`` or
        ``entry_point:<distribution> <version>:<module>``."""
        if self.kind == "builtin":
            return "builtin"
        if self.kind == "file":
            return f"file:{self.path}"
        if self.kind == "module":
            return f"module:{self.module}"
        return f"entry_point:{self.distribution} {self.version}:{self.module}"

    def record(self) -> dict[str, str | None]:
        """The source without its code, for JSON records (failures)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "code"}


def builtin_names() -> list[str]:
    return sorted(REGISTRY)


def installed_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``offbench.algorithms`` entry points of installed packages, by name; refuses two packages
    announcing one name and a package announcing a built-in's name."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name in REGISTRY:
            raise UnknownAlgorithmError(
                f"the installed package {_distribution(point)} announces an algorithm {point.name!r}, the "
                f"name of a built-in; uninstall it or rename its {ENTRY_POINT_GROUP} entry point."
            )
        other = found.get(point.name)
        if other is not None and other.value != point.value:
            raise UnknownAlgorithmError(
                f"two installed packages announce the algorithm {point.name!r} ({_distribution(other)}: "
                f"{other.value}; {_distribution(point)}: {point.value}); uninstall one of them."
            )
        found[point.name] = point
    return found


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    return point.dist.name if point.dist is not None else "(unknown distribution)"


def looks_like_path(reference: str) -> bool:
    return reference.endswith(".py") or "/" in reference or os.sep in reference


def resolve(reference: str, base: Path | None = None) -> tuple[Algorithm, AlgorithmSource]:
    """The algorithm ``reference`` names and where it came from (see the module's docstring for the
    order). Raises :class:`UnknownAlgorithmError` with one line naming what was tried."""
    if reference in REGISTRY:
        source = AlgorithmSource(kind="builtin", name=reference, module=REGISTRY[reference])
        return load(source), source
    points = installed_entry_points()
    if reference in points:
        source = entry_point_source(points[reference])
    elif looks_like_path(reference):
        source = file_source(reference, base)
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", reference):
        source = module_source(reference, points)
    else:
        raise _unknown(reference, points)
    algorithm = load(source)
    if source.kind == "entry_point" and algorithm.name != reference:
        raise UnknownAlgorithmError(
            f"the entry point {reference!r} of {source.distribution} loads an algorithm named "
            f"{algorithm.name!r}; an entry point's name must be the ALGORITHM.name it loads."
        )
    check_name(algorithm, source, points)
    return algorithm, dataclasses.replace(source, name=algorithm.name)


def _unknown(reference: str, points: dict) -> UnknownAlgorithmError:
    names = [*REGISTRY, *points]
    installed = ", ".join(sorted(points)) or "none installed"
    return UnknownAlgorithmError(
        f"unknown algorithm {reference!r}: not a built-in ({', '.join(sorted(REGISTRY))}), not an installed "
        f"plug-in ({installed}), not a .py file and not an importable module.{suggest(reference, names)} "
        "Pass a built-in name, a path to a .py file declaring ALGORITHM, or a module name (package.module)."
    )


def check_name(algorithm: Algorithm, source: AlgorithmSource, points: dict) -> None:
    """A plug-in's declared name is a plain name that no built-in and no other plug-in holds."""
    where = source.origin
    if not isinstance(algorithm.name, str) or not NAME.match(algorithm.name):
        raise UnknownAlgorithmError(
            f"{where}: ALGORITHM.name {algorithm.name!r} must be letters, digits, '_', '.' or '-', starting "
            "with a letter or digit (it names the results' files)."
        )
    if algorithm.name in REGISTRY:
        raise UnknownAlgorithmError(
            f"{where} declares the algorithm {algorithm.name!r}, the name of a built-in; a plug-in may not "
            "shadow one. Rename it: ALGORITHM = Algorithm(name=...)."
        )
    point = points.get(algorithm.name)
    if source.kind != "entry_point" and point is not None and point.module != source.module:
        raise UnknownAlgorithmError(
            f"{where} declares the algorithm {algorithm.name!r}, the name of the installed plug-in "
            f"{point.value} ({_distribution(point)}); two plug-ins may not share a name. Rename one."
        )


def file_source(reference: str, base: Path | None = None) -> AlgorithmSource:
    path = Path(reference).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    path = path.absolute()
    if not path.exists():
        where = f" (relative to {base})" if base is not None and not Path(reference).is_absolute() else ""
        raise UnknownAlgorithmError(
            f"algorithm file {reference}{where} does not exist. Give the path of a .py file that declares "
            "ALGORITHM."
        )
    if not path.is_file() or path.suffix != ".py":
        raise UnknownAlgorithmError(
            f"{path} is not a Python file: an algorithm plug-in is a .py file that declares ALGORITHM."
        )
    try:
        code = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UnknownAlgorithmError(f"cannot read the algorithm file {path}: {one_line(error)}.") from error
    digest = hashlib.sha256(code.encode()).hexdigest()
    stem = re.sub(r"\W", "_", path.stem)
    return AlgorithmSource(
        kind="file",
        name="",  # filled in by ``resolve`` once the module declares it
        module=f"offbench_plugin_{stem}_{digest[:12]}",
        digest=digest,
        path=str(path),
        code=code,
    )


def module_source(module: str, points: dict | None = None) -> AlgorithmSource:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:  # a missing parent package
        spec, cause = None, one_line(error)
    else:
        cause = None
    if spec is None:
        if "." not in module:
            raise _unknown(module, points or {})
        raise UnknownAlgorithmError(
            f"no module named {module!r}{f' ({cause})' if cause else ''}: install its package or add its "
            "folder to PYTHONPATH, or pass the path of a .py file instead."
        )
    digest, distribution, version = package_digest(module)
    return AlgorithmSource(
        kind="module", name="", module=module, digest=digest, distribution=distribution, version=version
    )


def entry_point_source(point: importlib.metadata.EntryPoint) -> AlgorithmSource:
    module, _, attribute = point.value.partition(":")
    digest, _, _ = package_digest(module.strip())
    return AlgorithmSource(
        kind="entry_point",
        name="",  # filled in by ``resolve`` once the module declares it
        module=module.strip(),
        attribute=attribute.strip() or ATTRIBUTE,
        digest=digest,
        distribution=_distribution(point),
        version=point.dist.version if point.dist is not None else None,
    )


def package_digest(module: str) -> tuple[str, str | None, str | None]:
    """(sha256, distribution, version) of the code ``module`` runs: every file of its top-level package
    (or its single file) by relative path and content, and the installed distribution's version."""
    top = module.split(".")[0]
    spec = importlib.util.find_spec(top)
    digest = hashlib.sha256()
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            root = Path(location)
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    elif spec is not None and spec.origin and Path(spec.origin).is_file():
        digest.update(Path(spec.origin).read_bytes())
    distributions = importlib.metadata.packages_distributions().get(top, [])
    distribution = distributions[0] if distributions else None
    version = importlib.metadata.version(distribution) if distribution else None
    digest.update(f"\0version={version}".encode())
    return digest.hexdigest(), distribution, version


def load(source: AlgorithmSource) -> Algorithm:
    """The algorithm ``source`` describes, loaded in this process: the one function a worker calls with a
    job's source. A file plug-in is executed from ``source.code`` (no file is read); a module or entry
    point is imported and must have the digest it was planned with, else the worker runs other code."""
    algorithm = _load(source)
    if source.name and algorithm.name != source.name:
        raise UnknownAlgorithmError(
            f"{source.origin} declares the algorithm {algorithm.name!r}, not {source.name!r} as when the "
            "job was planned; plan it again."
        )
    return algorithm


@cache
def _load(source: AlgorithmSource) -> Algorithm:
    if source.kind == "file":
        module = _file_module(source)
    else:
        if source.kind != "builtin":
            digest = package_digest(source.module)[0]
            if digest != source.digest:
                raise UnknownAlgorithmError(
                    f"{source.origin}: the installed code differs from the code the job was planned with "
                    f"(digest {digest[:12]}, planned {str(source.digest)[:12]}); install the same version "
                    "everywhere the job runs."
                )
        module = _import(source)
    return declared(module, source)


def _import(source: AlgorithmSource) -> types.ModuleType:
    try:
        return importlib.import_module(source.module)
    except Exception as error:
        raise UnknownAlgorithmError(
            f"the module {source.module} fails to import: {_error_line(error)}. Fix the module."
        ) from error


def _file_module(source: AlgorithmSource) -> types.ModuleType:
    """The file plug-in's module, executed from its code under a name derived from its digest (classes
    defined there pickle by reference, so the same name must load the same code in every process)."""
    if source.code is None or hashlib.sha256(source.code.encode()).hexdigest() != source.digest:
        raise UnknownAlgorithmError(f"{source.origin}: the carried source does not match its digest.")
    if source.module in sys.modules:
        return sys.modules[source.module]
    module = types.ModuleType(source.module)
    module.__file__ = source.path
    sys.modules[source.module] = module  # dataclasses and typing look the module up while it executes
    try:
        exec(compile(source.code, source.path or source.module, "exec"), module.__dict__)
    except Exception as error:
        del sys.modules[source.module]
        raise UnknownAlgorithmError(
            f"{source.path} fails to import: {_error_line(error, source.path)}. Fix the file."
        ) from error
    return module


def _error_line(error: BaseException, filename: str | None = None) -> str:
    """``<Type>: <message> (line N)``: the module's own error, with the line of the file where it arose."""
    line = None
    if isinstance(error, SyntaxError):
        line = error.lineno
    else:
        frames = traceback.extract_tb(error.__traceback__)
        inside = [frame for frame in frames if filename is None or frame.filename == filename]
        line = inside[-1].lineno if inside else None
    where = f" (line {line})" if line else ""
    message = error.msg if isinstance(error, SyntaxError) else one_line(error)
    return f"{type(error).__name__}: {message}{where}"


def declared(module: types.ModuleType, source: AlgorithmSource) -> Algorithm:
    where = source.path or source.module
    if not hasattr(module, source.attribute):
        raise UnknownAlgorithmError(
            f"{where} declares no {source.attribute}: end the module with {source.attribute} = "
            "Algorithm(name=..., Config=..., init=..., update=..., act=...) (from offbench.algorithms)."
        )
    algorithm = getattr(module, source.attribute)
    if not isinstance(algorithm, Algorithm):
        raise UnknownAlgorithmError(
            f"{where}: {source.attribute} is a {type(algorithm).__name__}, not an offbench.algorithms."
            f"Algorithm; declare {source.attribute} = Algorithm(name=..., Config=..., init=..., update=..., "
            "act=...)."
        )
    return algorithm


def get_algorithm(reference: str) -> Algorithm:
    """The algorithm a built-in name, an installed plug-in's name, a file path or a module names."""
    return resolve(reference)[0]


def available_algorithms() -> list[str]:
    """The built-in algorithms' names."""
    return builtin_names()


def listing() -> list[tuple[str, str]]:
    """(name, origin) of every algorithm usable by name: the built-ins, then installed plug-ins."""
    rows = [(name, "builtin") for name in builtin_names()]
    for name, point in sorted(installed_entry_points().items()):
        version = point.dist.version if point.dist is not None else "?"
        rows.append((name, f"entry_point:{_distribution(point)} {version}:{point.value}"))
    return rows
