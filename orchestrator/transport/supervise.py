"""The supervisor a step's command runs under on the host: POSIX sh, nothing to install.

A supervised command is named by a run id (``UPGRADE/STEP``, e.g.
``u20261201-120000-abc123/upgrade-computes.install.2``) and leaves a record
of a few files ``STEP,*`` in ``.orchestrator/runs/UPGRADE/`` (a 0700
directory under the login directory; both parts escaped, see `record_path`):

* ``STEP,pid``: the supervisor's PID and the host's boot id; created with
  O_EXCL, so it is also the claim: one run id starts its command once;
* ``STEP,in.N``: the command's text, 0600, removed when the command ends;
* ``STEP,cpid``: the command's process group (what a kill signals);
* ``STEP,out``: its merged stdout and stderr;
* ``STEP,done.KIND.VALUE``: an empty file whose name is the ending
  (``done.exit.7``, ``done.signal.9``, ``done.killed.timeout``), created in
  one step, so a reader never sees half an ending.

One exec (`start_command`) does everything: the script arrives on stdin, the
wrapper stores it and starts the supervisor in a session of its own, so a
channel or connection that goes away takes neither with it; the wrapper then
waits for it as its child and prints the output tail on stdout and one
`MARK` line on stderr. Run again with the same run id, the same exec waits
for the recorded PID instead (polling every 0.2 s: only after a reconnect)
or reports the recorded ending; it never starts the command a second time.
`kill_command` kills the command's process group (through sudo when it runs
as root); a run it finds not started yet is recorded as killed, so it never
starts. The pool sends the same wrapper its requests through an agent, one
exec per connection (`agent_command`, `orchestrator.transport.agent`).

The host needs ``sh``, ``setsid`` (util-linux, for ``-w``), ``cat``, ``wc``,
``tail``, ``rm`` and ``mkdir``, and for the agent ``head -c`` (without it,
every run execs the wrapper); ``/proc`` when there is one (boot id,
zombies). As with any shell, an exit status above 128 reads as "killed by
signal (status - 128)".
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

RUNS_DIR = ".orchestrator/runs"
MARK = "@@orchestrator-supervise"
# $0 of the wrapper: what `ps` shows, and what the in-process hosts recognise
WRAPPER_NAME = "orchestrator-supervise"
# $0 of the agent (`agent_command`), and the first word of each of its replies
AGENT_NAME = "orchestrator-agent"
AGENT_MARK = "@@orchestrator-agent"
# $0 of the record removal (`forget_command`)
FORGETTER_NAME = "orchestrator-forget"
# how much of the output file the wrapper sends back (UTF-8: up to 4 bytes a
# character, so at least `MAX_OUTPUT_CHARS` of text)
OUTPUT_TAIL_BYTES = 256 * 1024
# a repeat of a command (`repeat_while_exit`) is the same chain: RUN~2, RUN~3
REPEAT_SEPARATOR = "~"
_MAX_PART = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

# The scripts share these. `gone PID`: it no longer runs, or is a zombie
# nobody reaped (a container's init may not). `ending`: print the output tail
# and the recorded ending of record `$b`, and exit; or return 1 if it has none.
_COMMON = r"""
say() { printf '%s %s\n' __MARK__ "$*" >&2; }
gone() {
  kill -0 "$1" 2>/dev/null || return 0
  st=
  read -r st 2>/dev/null < "/proc/$1/stat" || return 1
  case ${st##*) } in Z*|X*) return 0 ;; esac
  return 1
}
ending() {
  for f in "$b",done.*; do
    [ -e "$f" ] || continue
    [ -s "$b,out" ] && tail -c __TAIL__ -- "$b,out"
    f=${f##*,done.}
    say "${f%%.*} ${f#*.}"
    exit 0
  done
  return 1
}
"""

# The supervisor: `setsid sh -c SUPERVISOR _ RECORD SCRIPT SUDO`, in a session
# of its own. Claims the record (an O_EXCL create: exit 75 if another
# invocation did), runs the command in a session of its own again (so that a
# kill of the command's process group spares the supervisor), records the end.
_SUPERVISOR = r"""
b=$1 t=$2 o=$3
k=
read -r k 2>/dev/null < /proc/sys/kernel/random/boot_id
set -C
echo "$$ $k" 2>/dev/null > "$b,pid" || { rm -f -- "$t"; exit 75; }
set +C
true > "$b,out"
if [ -n "$o" ]; then
  true > "$b,cpid"
  sudo -n setsid -w sh -c 'echo $$ >&2; exec sh "$1" 2>&1' sh "$t" >> "$b,out" 2>> "$b,cpid"
  s=$?
  {
    read -r g
    case $g in *[!0-9]*) echo "$g" ;; esac
    while IFS= read -r l || [ -n "$l" ]; do echo "$l"; done
  } < "$b,cpid" >> "$b,out"
else
  setsid -w sh "$t" >> "$b,out" 2>&1 &
  echo "$!" > "$b,cpid"
  wait "$!"
  s=$?
fi
rm -f -- "$t"
r=
for f in "$b",kill.*; do [ -e "$f" ] && r=killed.${f##*,kill.}; done
if [ -z "$r" ]; then
  if [ "$s" -gt 128 ]; then r=signal.$((s - 128)); else r=exit.$s; fi
fi
true > "$b,done.$r"
"""

# The wrapper on the channel: `sh -c WRAPPER NAME SUPERVISOR RECORD SIZE SUDO
# [FORGET...]`, the script on stdin. `follow` waits for a run that another
# invocation started; a run it starts itself it waits for as its child.
_WRAPPER = (
    r"""
S=$1 b=$2 n=$3 o=$4
shift 4
for f; do set -- "$@" "$f",*; shift; done
[ "$#" -eq 0 ] || rm -f -- "$@"
"""
    + _COMMON
    + r"""
follow() {
  i=0 seen=
  while ! ending; do
    p= k= now=
    read -r p k 2>/dev/null < "$b,pid"
    case $p in '' | *[!0-9]*) p= ;; esac
    if [ -n "$p" ]; then
      if [ -z "$seen" ]; then
        seen=1
        read -r now 2>/dev/null < /proc/sys/kernel/random/boot_id
        if [ -n "$k" ] && [ -n "$now" ] && [ "$k" != "$now" ]; then
          [ -s "$b,out" ] && tail -c __TAIL__ -- "$b,out"
          say died "the host rebooted while the command ran"
          exit 0
        fi
      fi
      if gone "$p"; then
        ending
        [ -s "$b,out" ] && tail -c __TAIL__ -- "$b,out"
        say died "its supervisor (pid $p) ended without recording how the command ended"
        exit 0
      fi
    else
      i=$((i + 1))
      [ "$i" -lt 150 ] || { say died "no supervisor PID was ever recorded"; exit 0; }
    fi
    sleep 0.2 2>/dev/null || sleep 1
  done
}
ending
[ -e "$b,pid" ] && follow
p=${b%/*}
[ -d "$p" ] || mkdir -p -m 700 -- "$p" || { say refused "cannot create $p"; exit 0; }
t=$b,in.$$
if ! (umask 077 && exec cat > "$t"); then
  rm -f -- "$t"
  say refused "cannot store the script in $p"
  exit 0
fi
m=$(wc -c < "$t")
if ! [ "$m" -eq "$n" ] 2>/dev/null; then
  rm -f -- "$t"
  say refused "the script arrived truncated ($m of $n bytes)"
  exit 0
fi
setsid sh -c "$S" orchestrator-supervisor "$b" "$t" "$o" < /dev/null > /dev/null 2>&1 &
wait "$!"
s=$?
ending
[ -e "$b,pid" ] && follow
rm -f -- "$t"
say refused "the supervisor did not start (setsid sh exited $s)"
"""
)

# `sh -c KILLER _ RECORD REASON SUDO`: kill the command's process group; exit
# 0 once it is killed or over. A run not started yet is claimed and recorded
# as killed: it never starts.
_KILLER = r"""
b=$1 r=$2 o=$3
p=${b%/*}
[ -d "$p" ] || mkdir -p -m 700 -- "$p"
set -C
if echo "- -" 2>/dev/null > "$b,pid"; then true > "$b,done.killed.$r"; exit 0; fi
set +C
for f in "$b",done.*; do [ -e "$f" ] && exit 0; done
true > "$b,kill.$r"
i=0
while :; do
  g=
  read -r g 2>/dev/null < "$b,cpid"
  case $g in '' | *[!0-9]*) ;; *) break ;; esac
  for f in "$b",done.*; do [ -e "$f" ] && exit 0; done
  i=$((i + 1))
  [ "$i" -lt 200 ] || { echo "no process group recorded for $b" >&2; exit 1; }
  sleep 0.05 2>/dev/null || sleep 1
done
if [ -n "$o" ]; then k="sudo -n kill"; else k=kill; fi
$k -s KILL -- "-$g" 2>/dev/null && exit 0
i=0
while [ "$i" -lt 20 ]; do
  for f in "$b",done.*; do [ -e "$f" ] && exit 0; done
  i=$((i + 1))
  sleep 0.05 2>/dev/null || sleep 1
done
echo "cannot kill process group $g" >&2
exit 1
"""

# `sh -c FORGETTER _ UPGRADE_DIR`: remove every record whose command no
# longer runs; print how many still run (those are kept).
_FORGETTER = (
    _COMMON
    + r"""
u=$1
[ -d "$u" ] || { echo 0; exit 0; }
n=0
for f in "$u"/*,pid; do
  [ -e "$f" ] || continue
  b=${f%,pid}
  for e in "$b",done.*; do [ -e "$e" ] && { rm -f -- "$b",*; continue 2; }; done
  p= k=
  read -r p k 2>/dev/null < "$f"
  case $p in '' | *[!0-9]*) p= ;; esac
  if [ -n "$p" ] && ! gone "$p"; then n=$((n + 1)); else rm -f -- "$b",*; fi
done
for f in "$u"/*,in.*; do
  [ -e "$f" ] && [ ! -e "${f%,in.*},pid" ] && rm -f -- "$f"
done
rmdir -- "$u" 2>/dev/null
echo "$n"
"""
)


# The agent: `sh -c AGENT NAME WRAPPER SUPERVISOR`, one exec per connection,
# runs the wrapper once per request on its stdin, one request at a time. A
# request is a line `RECORD SIZE SUDO COUNT` (SUDO is `sudo` or `-`), COUNT
# lines of records to forget, then SIZE bytes of script. The agent reads the
# script itself (`head -c`: nothing else would stop at SIZE bytes without an
# end of input), so a wrapper that follows an existing record and reads no
# script leaves the next request intact; nothing follows a request before its
# reply, so a `head` that reads ahead finds nothing more. The reply: a line
# `AGENT_MARK OUT ERR`, then the wrapper's stdout (OUT bytes) and stderr (ERR
# bytes). An agent that cannot work here answers `AGENT_MARK refused WHY`
# to the first request, unread, and ends: that connection's runs exec. Its
# files are in `.orchestrator/agent.PID` (0700), gone when it ends; the next
# agent removes those of agents that were killed.
_AGENT = r"""
W=$1 S=$2
d=.orchestrator/agent.$$
no() { printf '%s refused %s\n' __AGENT__ "$*"; exit 0; }
head -c 0 < /dev/null > /dev/null 2>&1 || no "head -c does not work here"
mkdir -p -m 700 .orchestrator 2>/dev/null
for f in .orchestrator/agent.*; do
  p=${f##*.}
  case $p in '' | *[!0-9]*) continue ;; esac
  kill -0 "$p" 2>/dev/null || rm -rf -- "$f"
done
mkdir -m 700 -- "$d" 2>/dev/null || no "cannot create $d"
trap 'rm -rf -- "$d"' EXIT
trap 'exit 1' HUP PIPE TERM
while IFS=' ' read -r b n o k; do
  set --
  i=0
  while [ "$i" -lt "$k" ]; do
    IFS= read -r f || exit 0
    set -- "$@" "$f"
    i=$((i + 1))
  done
  (umask 077 && exec head -c "$n" > "$d/in") || exit 1
  [ "$o" = sudo ] || o=
  sh -c "$W" __WRAPPER__ "$S" "$b" "$n" "$o" "$@" < "$d/in" > "$d/out" 2> "$d/err"
  rm -f -- "$d/in"
  printf '%s %s %s\n' __AGENT__ "$(wc -c < "$d/out")" "$(wc -c < "$d/err")"
  cat -- "$d/out" "$d/err"
done
"""


def _script(text: str) -> str:
    text = text.replace("__TAIL__", str(OUTPUT_TAIL_BYTES)).replace("__MARK__", MARK)
    text = text.replace("__AGENT__", AGENT_MARK).replace("__WRAPPER__", WRAPPER_NAME)
    return text.strip() + "\n"


_WRAPPER_SH = _script(_WRAPPER)
_SUPERVISOR_SH = _script(_SUPERVISOR)
_KILLER_SH = _script(_KILLER)
_FORGETTER_SH = _script(_FORGETTER)
_AGENT_SH = _script(_AGENT)
# the start of every `start_command`, quoted once (it is the same 5 KB each time)
_START = shlex.join(["sh", "-c", _WRAPPER_SH, WRAPPER_NAME, _SUPERVISOR_SH])
_AGENT_COMMAND = shlex.join(["sh", "-c", _AGENT_SH, AGENT_NAME, _WRAPPER_SH, _SUPERVISOR_SH])


def _escape(part: str) -> str:
    """One path component that cannot climb out or collide: %XX for anything unusual."""
    escaped = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), part)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    return escaped


def _split(run_id: str) -> tuple[str, str]:
    upgrade, _, rest = run_id.partition("/")
    if not upgrade or not rest:
        raise ValueError(f"run id {run_id!r} is not UPGRADE/STEP")
    return upgrade, rest


def upgrade_dir(upgrade_id: str) -> str:
    """Where the records of one upgrade live, relative to the login directory."""
    if not upgrade_id:
        raise ValueError("empty upgrade id")
    part = _escape(upgrade_id)
    if len(part) > _MAX_PART:
        raise ValueError(f"upgrade id {upgrade_id!r} is too long for a directory name")
    return f"{RUNS_DIR}/{part}"


def record_path(run_id: str) -> str:
    """Where a run id's record lives: ``.orchestrator/runs/UPGRADE/STEP`` (files ``STEP,*``).

    Each part is escaped (``%XX``) so that it cannot climb out, hide as a dot
    file or collide with another run id's record.
    """
    upgrade, rest = _split(run_id)
    part = _escape(rest)
    if len(part) > _MAX_PART:
        raise ValueError(f"run id {run_id!r} is too long for a directory name")
    return f"{upgrade_dir(upgrade)}/{part}"


def upgrade_of(run_id: str) -> str:
    return _split(run_id)[0]


def repeat_run_id(run_id: str | None, repeat: int) -> str | None:
    """The run id of the `repeat`-th run of one command (1: the run id itself)."""
    if run_id is None or repeat <= 1:
        return run_id
    return f"{run_id}{REPEAT_SEPARATOR}{repeat}"


def chain(run_id: str) -> str:
    """The run id without its repeat number: repeats of one command share their chain."""
    head, sep, tail = run_id.rpartition(REPEAT_SEPARATOR)
    return head if sep and tail.isdigit() else run_id


def start_command(record: str, size: int, *, sudo: bool, forget: tuple[str, ...] = ()) -> str:
    """Start (or follow) the run recorded in `record`; `size` bytes of script on stdin.

    `forget`: records (`record_path`) to remove first: their results were returned.
    """
    return _START + " " + shlex.join([record, str(size), "sudo" if sudo else "", *forget])


def agent_command() -> str:
    """The agent's exec: it runs `start_command`'s wrapper for each request."""
    return _AGENT_COMMAND


def agent_request(record: str, script: bytes, *, sudo: bool, forget: tuple[str, ...] = ()) -> bytes:
    """One request to the agent: what `start_command(record, len(script), ...)`
    would run, with `script` as its input."""
    head = f"{record} {len(script)} {'sudo' if sudo else '-'} {len(forget)}\n"
    return "".join([head, *(f"{f}\n" for f in forget)]).encode() + script


def parse_request(text: bytes) -> tuple[str, int, bool, tuple[str, ...], int] | None:
    """An agent request's header (record, size, sudo, forget) and where its
    script begins; None while it is incomplete (for the in-process hosts)."""
    end = text.find(b"\n")
    if end < 0:
        return None
    record, size, sudo, count = text[:end].decode().split(" ")
    forget: list[str] = []
    for _ in range(int(count)):
        start, end = end + 1, text.find(b"\n", end + 1)
        if end < 0:
            return None
        forget.append(text[start:end].decode())
    return record, int(size), sudo == "sudo", tuple(forget), end + 1


def kill_command(record: str, reason: str, *, sudo: bool) -> str:
    return shlex.join(
        ["sh", "-c", _KILLER_SH, "orchestrator-kill", record, reason, "sudo" if sudo else ""]
    )


def forget_command(upgrade: str) -> str:
    return shlex.join(["sh", "-c", _FORGETTER_SH, FORGETTER_NAME, upgrade])


@dataclass(frozen=True, slots=True)
class Ending:
    """How a supervised run ended, as its wrapper reported it.

    `kind`: ``exit`` (detail: the status), ``signal`` (the number),
    ``killed`` (``timeout`` or ``cancel``), ``died`` (why the record has no
    ending) or ``refused`` (why it did not start).
    """

    kind: str
    detail: str
    # what else the wrapper said on stderr (a shell's complaint)
    diagnostics: str = ""


def parse_ending(stderr: str) -> Ending | None:
    """The wrapper's last `MARK` line, or None: it did not get to say how the run ended."""
    lines = stderr.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if line.startswith(MARK + " "):
            kind, _, detail = line[len(MARK) + 1 :].partition(" ")
            others = "\n".join(lines[:index] + lines[index + 1 :]).strip()
            return Ending(kind, detail, others)
    return None
