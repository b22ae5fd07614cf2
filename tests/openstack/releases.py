"""The real Ironic releases of the `openstack` tier, one cached virtualenv each.

openstack-ansible deploys every service release into a virtualenv of its own
(``/openstack/venvs/ironic-<tag>``) and points the service at it; so does
this tier. Each release is installed once into a cache directory, pinned by
a constraints file of this repository (``constraints/ironic-<release>.txt``,
which says where every pin comes from), and reused by every later run: a
ready virtualenv is never touched again, so a second run downloads nothing.

The cache is ``$ORCHESTRATOR_OPENSTACK_CACHE``, else
``$XDG_CACHE_HOME/rolling-orchestrator/openstack`` (``~/.cache/...``). A
virtualenv's directory name carries a digest of what made it (release,
constraints, Python), so changing a pin builds a new one beside the old.

``python -m tests.openstack.releases`` builds (or finds) both and prints
where they are and how long it took.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONSTRAINTS_DIR = Path(__file__).resolve().parent / "constraints"
READY = "READY"
# the marker playbooks/ironic.yaml's install-code looks for: the venv is built
INSTALLED = ".installed"
# what a pip install of one release may take on a slow machine with a cold cache
INSTALL_TIMEOUT = 900.0


@dataclass(frozen=True, slots=True)
class Release:
    """One Ironic release: its name, the package version that is it, its pins."""

    name: str  # "2026.1": what plans, pins and gates speak
    package: str  # "35.1.0": what pip installs and `ironic-api --version` prints
    specifier: str  # the package versions that are this release (version probes)

    @property
    def constraints(self) -> Path:
        return CONSTRAINTS_DIR / f"ironic-{self.name}.txt"

    @property
    def requirements(self) -> tuple[str, ...]:
        # PyMySQL: the driver deployments use for MariaDB ([database] connection)
        return (f"ironic=={self.package}", "PyMySQL")


# ironic/common/release_mappings.py: '2026.1' is its '35.0' entry, '2026.2' its '39.0'
OLD = Release("2026.1", "35.1.0", ">=35,<36")
NEW = Release("2026.2", "39.0.0", ">=39,<40")
RELEASES = (OLD, NEW)


def cache_root() -> Path:
    explicit = os.environ.get("ORCHESTRATOR_OPENSTACK_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rolling-orchestrator" / "openstack"


def venv_path(release: Release, root: Path | None = None) -> Path:
    made_of = "\n".join(
        (release.package, *release.requirements, release.constraints.read_text(), sys.version)
    )
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:12]
    return (root or cache_root()) / f"ironic-{release.package}-{digest}"


@dataclass(frozen=True, slots=True)
class Venv:
    release: Release
    path: Path
    built: bool  # False: found ready in the cache, nothing installed
    seconds: float

    def bin(self, program: str) -> Path:
        return self.path / "bin" / program


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time per cache (two test runs may share it)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv(release: Release, root: Path | None = None) -> Venv:
    """The release's virtualenv, built into the cache unless it is there and ready."""
    started = time.monotonic()
    path = venv_path(release, root)
    with _locked(path.parent):
        if (path / READY).is_file():
            (path / INSTALLED).touch()
            return Venv(release, path, built=False, seconds=time.monotonic() - started)
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(partial)], f"python -m venv {partial}")
        # the venv's scripts name their interpreter by absolute path: build in
        # place under the final name, so the rename below changes nothing inside
        partial.rename(path)
        try:
            _run(
                [
                    str(path / "bin" / "python"),
                    *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                    *("-c", str(release.constraints)),
                    *release.requirements,
                ],
                f"pip install ironic=={release.package}",
            )
            reported = _run(
                [str(path / "bin" / "ironic-dbsync"), "--version"],
                f"ironic-dbsync --version in {path}",
            ).strip()
            if reported.splitlines()[-1:] != [release.package]:
                raise RuntimeError(
                    f"{path}: ironic-dbsync --version printed {reported!r}, want {release.package}"
                )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        (path / INSTALLED).touch()
        (path / READY).write_text(f"ironic {release.package} for release {release.name}\n")
    return Venv(release, path, built=True, seconds=time.monotonic() - started)


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}"
            f"{result.stderr[-3000:]}"
        )
    return result.stdout


def main() -> None:
    for release in RELEASES:
        venv = ensure_venv(release)
        state = "built" if venv.built else "cached"
        print(
            f"ironic {release.package} ({release.name}): {state} in {venv.seconds:.1f}s: "
            f"{venv.path}"
        )


if __name__ == "__main__":
    main()
