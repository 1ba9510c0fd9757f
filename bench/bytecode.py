"""``python -m bench.bytecode``: compile the worker's and the API's modules to bytecode
in the benchmark's cache (``PYTHONPYCACHEPREFIX``), as a deployment would have them.

Why: this sandbox sets ``PYTHONDONTWRITEBYTECODE=1`` and uv installs packages without
``.pyc`` files, so every process here compiles every module from source at start-up.
That inflates start-up time and, through the compiler's transient memory, the peak RSS
(``VmHWM``) by about 10 MB. A deployment has bytecode: pip compiles it on install (the
peers' venvs were made with pip), and a uv-built image uses ``--compile-bytecode``. The
benchmark therefore runs its children with a private bytecode cache, filled here first;
``python -m bench --cold-imports`` measures without it.
"""

from __future__ import annotations

import compileall
import importlib
import os
import sys

# Everything a worker or the API server loads, so their whole packages get compiled.
MODULES = ["worker.__main__", "worker.pool", "functions.api.app", "bench.jobs",
           "bench.serve_api", "shared.job_types", "shared.registry", "uvicorn",
           "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.on", "uvicorn.loops.asyncio"]


def package_roots() -> tuple[set[str], set[str]]:
    """Directories of the loaded third-party and own packages, and loose module files."""
    dirs: set[str] = set()
    files: set[str] = set()
    site = [p for p in sys.path if p.endswith("site-packages")]
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        root = next((s for s in site if path.startswith(s + os.sep)), None)
        if root is None:
            files.add(path)  # stdlib and our own modules: just the files loaded
            continue
        top = path[len(root) + 1:].split(os.sep, 1)[0]
        full = os.path.join(root, top)
        (dirs if os.path.isdir(full) else files).add(full)
    return dirs, files


# Plain for the API, -OO (level 2) for the worker, which runs as `python -OO -m worker`.
LEVELS = [0, 2]


def main() -> None:
    if not sys.pycache_prefix:
        raise SystemExit("PYTHONPYCACHEPREFIX is not set: nothing to fill")
    for name in MODULES:
        importlib.import_module(name)
    dirs, files = package_roots()
    for level in LEVELS:
        for d in sorted(dirs):
            compileall.compile_dir(d, quiet=1, workers=1, optimize=level)
        for f in sorted(files):
            compileall.compile_file(f, quiet=1, optimize=level)


if __name__ == "__main__":
    main()
