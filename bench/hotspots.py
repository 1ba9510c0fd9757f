"""Where a worker's CPU goes, from py-spy's raw (collapsed-stack) output.

``python -m bench.hotspots FILE [--top 25]`` prints three tables: own (self) samples by
package (which library burns the CPU), own samples by function, and inclusive samples by
function (which of our calls costs the most, everything below it included). py-spy drops
idle samples by default, so the total is the worker's busy time. Samples taken while a
module is being imported (start-up) are counted apart and left out of the tables: the
drain figures exclude start-up too.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass
class Profile:
    samples: int = 0
    importing: int = 0
    own_fn: Counter[str] = field(default_factory=Counter)
    own_pkg: Counter[str] = field(default_factory=Counter)
    incl_fn: Counter[str] = field(default_factory=Counter)


def package(path: str) -> str:
    """A file's library (the folder under site-packages) or our own top-level package."""
    if "site-packages/" in path:
        rest = path.split("site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    parts = [p for p in path.split("/") if p]
    for ours in ("shared", "worker", "bench", "functions"):
        if ours in parts:
            return ours
    return parts[0] if parts else path


def function(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame, frame
    path = m["file"]
    short = path.split("site-packages/", 1)[-1]
    if "/lib/python3" in short:
        short = short.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return f"{m['name']} ({short})", path


def read(path: str) -> Profile:
    prof = Profile()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            if "_find_and_load (<frozen importlib._bootstrap>" in stack:
                prof.importing += n
                continue
            frames = [function(fr) for fr in stack.split(";")
                      if fr and not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            prof.samples += n
            name, file = frames[-1]
            prof.own_fn[name] += n
            prof.own_pkg[package(file)] += n
            for seen in {fn for fn, _ in frames}:
                prof.incl_fn[seen] += n
    return prof


def render(prof: Profile, top: int = 25) -> str:
    def table(title: str, counts: Counter[str]) -> list[str]:
        rows = [f"| {title} | samples | % |", "|---|---:|---:|"]
        for name, n in counts.most_common(top):
            rows.append(f"| `{name}` | {n} | {100 * n / max(prof.samples, 1):.1f} |")
        return rows

    out = [f"{prof.samples} busy samples after start-up ({prof.importing} more while "
           "importing modules, left out)"]
    out += ["", *table("own time by package", prof.own_pkg)]
    out += ["", *table("own time by function", prof.own_fn)]
    out += ["", *table("inclusive time by function", prof.incl_fn)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__)
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    print(render(read(a.file), a.top))


if __name__ == "__main__":
    main()
