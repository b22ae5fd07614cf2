"""The live view as an operator sees it: `orchestrator demo` in a real
terminal (tmux, on a server socket of the test's own), screens captured while
it runs and at its end, key lines asserted with the times masked.

    ORCHESTRATOR_SCREENS=DIR pytest tests/test_watch_screens.py   # keeps the screens
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import missing_parts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TIME = re.compile(r"\b\d+ (?:h \d+ min|min \d+ s|s)\b")


def masked(screen: str) -> str:
    return TIME.sub("<t>", screen)


def shows(screen: str, check: str | re.Pattern[str]) -> bool:
    return bool(re.search(check, screen)) if isinstance(check, re.Pattern) else check in screen


class Terminal:
    """One tmux session, 150 x 60, running one command until it ends."""

    def __init__(self, tmux: str, socket: str) -> None:
        self.tmux, self.socket = tmux, socket

    def tmux_run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tmux, "-L", self.socket, *argv], capture_output=True, text=True, check=False
        )

    def run(self, *argv: str) -> str:
        return self.tmux_run(*argv).stdout

    def start(self, command: str) -> None:
        done = self.tmux_run("new-session", "-d", "-s", "t", "-x", "150", "-y", "60", command)
        assert done.returncode == 0, f"tmux new-session: {done.stderr}"
        self.run("set-option", "-t", "t", "remain-on-exit", "on")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def ended(self) -> bool:
        return self.run("display-message", "-p", "-t", "t", "#{pane_dead}").strip() == "1"

    async def until(self, check: str | re.Pattern[str], timeout: float = 240) -> str:
        """Wait for the screen to show `check`; on timeout, fail with the last screen."""
        screen = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    screen = self.screen()
                    if shows(screen, check):
                        return screen
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pytest.fail(f"no {check!r} on screen in {timeout} s; the last screen:\n{screen}")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    tmux = shutil.which("tmux")
    if tmux is None:
        missing_parts("the screen tests need tmux; install with: sudo apt-get install -y tmux")
    # a server of its own per test: the last test's server may still be going
    # away when the next one starts, and a new session on its socket then fails
    socket = f"orchestrator-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    term = Terminal(tmux, socket)
    try:
        yield term
    finally:
        term.run("kill-server")


def keep(name: str, screen: str) -> None:
    where = os.environ.get("ORCHESTRATOR_SCREENS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.txt").write_text(screen)


def demo(*options: str, keep: Path | None = None) -> str:
    state = tempfile.mkdtemp(prefix="screens-")
    env = (
        f"env -u ORCHESTRATOR_STATE_DIR ORCHESTRATOR_STATE_DIR={state} "
        "TERM=xterm-256color COLUMNS=150 LINES=60"
    )
    if keep is not None:
        env += f" ORCHESTRATOR_DEMO_DIR={keep}"
    return f"cd {REPO} && {env} {sys.executable} -m orchestrator demo {' '.join(options)}"


@pytest.mark.timeout(400)
async def test_a_healthy_run_ends_with_its_verdict(terminal: Terminal) -> None:
    terminal.start(demo())
    running = await terminal.until(re.compile(r"hosts at work:\n.*upgrade-\w+ \S+ \w+"))
    keep("healthy-running", running)
    assert re.search(r"running  <t>", masked(running)), running
    end = await terminal.until(re.compile(r"succeeded in \d+ (?:s|min)"))
    keep("healthy-end", end)
    screen = masked(end)
    assert re.search(r"upgrade u\S+ succeeded in <t>, 7/7 hosts at 2\.0", screen), end
    assert "hosts 7/7 through every phase (done 7)" in screen, end
    assert "contract-db (point of no return)" in screen
    assert "first failure" not in screen
    # one title: the demo's own words while the view is live (its approval)
    # once left the view a line off, and a stale "waiting_approval" title above
    titles = [line for line in screen.splitlines() if re.match(r"upgrade u\S+: ", line)]
    assert len(titles) == 1, end
    assert "demo: approved the point of no return" in screen, end


@pytest.mark.timeout(400)
async def test_a_failed_host_stays_the_cause_on_screen(terminal: Terminal) -> None:
    terminal.start(demo("--fail-host", "cmp-2"))
    # while cmp-2 is checked, the screen says how far its health check is
    checking = await terminal.until(
        re.compile(r"♥ upgrade-computes cmp-2 checking \d+/\d+ passes, \d+ s of \d+ s")
    )
    keep("failing-checking", checking)
    end = await terminal.until(re.compile(r"rolled back after \d+"))
    keep("failing-end", end)
    screen = masked(end)
    assert "first failure: cmp-2 failed its health check:" in screen, end
    assert "where: phase upgrade-computes host cmp-2" in screen, end
    assert re.search(
        r"upgrade u\S+ rolled back after <t>: cmp-2 failed its health check: ", screen
    ), end
    # the rollback's own words are there too, but the cause is not lost to them
    assert screen.index("first failure") < screen.index("rolled back after")


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is under `directory` (minicloud's
    services each run in their host's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = (entry / "cwd").readlink()
            except OSError:
                continue
            if cwd.is_relative_to(directory):
                found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
async def test_closing_the_terminal_stops_the_demo_and_its_cloud(
    terminal: Terminal, tmp_path: Path
) -> None:
    """The terminal closes mid-upgrade (tmux gone: SIGHUP). The cloud's
    services run in sessions of their own; they used to live on, 7 per demo."""
    where = tmp_path / "demo"
    terminal.start(demo(keep=where))
    await terminal.until(re.compile(r"hosts at work:\n.*upgrade-\w+ \S+ \w+"))
    assert processes_in(where / "cloud"), "the cloud's services should be running"
    terminal.run("kill-server")
    async with asyncio.timeout(120):
        while processes_in(where / "cloud"):  # noqa: ASYNC110 - processes have no event
            await asyncio.sleep(0.2)
