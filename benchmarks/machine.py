"""What each benchmark prints first: the code and the machine its figures belong to."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path


def first_line(cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    """The first line a command prints, or "unknown" if it fails."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return (done.stdout.strip().splitlines() or ["unknown"])[0] if done.returncode == 0 else "unknown"


def describe(repo_root: Path, peers: str) -> list[str]:
    """The commit (and whether datarepo/ has changes beside it), the machine, the peers'
    versions and the load at the start."""
    dirty = first_line(["git", "status", "--porcelain", "--", "datarepo"], repo_root) not in ("unknown", "")
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return [
        f"datarepo at {first_line(['git', 'log', '-1', '--format=%h %s'], repo_root)}"
        + (" (plus uncommitted changes under datarepo/)" if dirty else ""),
        f"{os.cpu_count()} cores ({model}), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        f"peers: {peers}",
        "load average at start (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
