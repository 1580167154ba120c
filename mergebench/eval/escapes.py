"""The escape suite: programs that try to get out of the code sandbox, and host-side witnesses of success.

Why it ships with the library: whether generated code is contained depends on the machine (is bwrap
installed, does the kernel allow user namespaces?), so a user can run the same suite where they evaluate
(``python benchmarks/escape_suite.py``), and the tests run it in CI (``tests/eval/test_escape.py``).

Each :class:`Escape` is a program that **passes only if its escape worked** (it asserts that it read the
token, got an answer from the loopback Hub, ...), except where success can only be seen from outside (a
daemon outliving the run, a host process killed), whose programs end with a failing assertion. A
:class:`Trap` sets up the world around the runs -- a home folder with a Hugging Face token and a canary
file, an empty world-writable folder, a TCP server standing in for the loopback Hub and a UDP "DNS
server" (both answer, so a program that reaches them passes), a canary process of the sandbox's uid --
and :meth:`Trap.witnesses` lists what the host saw escape: a pass, a leaked secret, a file written, a
connection or datagram received, a dead canary, a surviving process, a run not stopped in time. An escape
is **contained** when that list is empty.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template

from mergebench.eval.isolation import as_user
from mergebench.eval.sandbox import NOBODY, SandboxConfig, SandboxResult, bwrap_refusal, run_program

PIDNS_MARK = "MB-ESCAPE:PIDNS:"
# Every program first reports its PID namespace on stderr (no audit event), so the host can look for
# survivors in it; the escapes keep stderr short so that this line stays in the kept tail.
PRELUDE = (f"import os as _os, sys as _sys\n_sys.stderr.write({PIDNS_MARK!r} + _os.readlink('/proc/self/ns/pid') "
           "+ '\\n')\n_sys.stderr.flush()\n")
_GRACE_S = 6.0  # beyond the timeout, how long a run may take before it counts as not stopped in time


@dataclass(frozen=True)
class Escape:
    """One attempt: ``source`` is a :class:`string.Template` over the :class:`Trap`'s ``$fields``."""

    name: str
    goal: str
    source: str


def _e(name: str, goal: str, source: str) -> Escape:
    return Escape(name, goal, source.strip() + "\n")


ESCAPES: tuple[Escape, ...] = (
    _e("read-hf-token", "read ~/.cache/huggingface/token", "assert open('$token_path').read().startswith('hf_')"),
    _e("env-hf-token", "find a token in the environment",
       "assert any(v.startswith('hf_') for v in _os.environ.values()), sorted(_os.environ)"),
    _e("list-home", "list the user's home folder",
       "assert any(n.startswith('mb-escape-canary') for n in _os.listdir('$home'))"),
    _e("read-project", "read the project's files", "assert 'mergebench' in open('$project/pyproject.toml').read()"),
    _e("read-etc-shadow", "read /etc/shadow", "assert 'root:' in open('/etc/shadow').read()"),
    _e("write-outside", "write outside the work folder",
       "open('$outside/escaped.txt', 'w').write('out')\nassert _os.path.exists('$outside/escaped.txt')"),
    _e("write-via-symlink", "write outside through a symlink",
       "_os.symlink('$outside/linked.txt', 'link')\nopen('link', 'w').write('out')\n"
       "assert _os.path.exists('$outside/linked.txt')"),
    _e("connect-loopback-hub", "connect to the loopback Hub (127.0.0.1)", """
import socket
s = socket.create_connection(('127.0.0.1', $hub_port), timeout=0.5)
s.sendall(b'GET /api/models HTTP/1.0\\r\\n\\r\\n')
assert s.recv(64).startswith(b'HTTP/1.0 200')"""),
    _e("resolve-dns", "resolve a host name", "import socket\nassert socket.getaddrinfo('huggingface.co', 443)"),
    _e("query-loopback-dns", "send a DNS query to a resolver on the host", """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x02hf\\x02co\\x00\\x00\\x01\\x00\\x01',
         ('127.0.0.1', $dns_port))
assert s.recvfrom(512)[0][:2] == b'\\x12\\x34'"""),
    _e("fork-bomb", "fork without end", """
while True:
    try:
        _os.fork()
    except OSError:
        pass"""),
    _e("allocate-10gb", "allocate 10 GB", "block = bytearray(10 * 2**30)\nassert len(block) == 10 * 2**30"),
    _e("infinite-loop", "loop forever", "while True:\n    pass"),
    _e("ignore-sigterm", "ignore SIGTERM and loop", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                                     "while True:\n    pass"),
    _e("kill-parent", "kill its parent process",
       "import signal\n_os.kill(_os.getppid(), signal.SIGKILL)\nassert False, 'seen from outside'"),
    _e("kill-process-group", "kill its process group",
       "import signal\n_os.killpg(0, signal.SIGKILL)\nassert False, 'seen from outside'"),
    _e("kill-every-process", "kill every process it may signal (kill -1)",
       "import signal\n_os.kill(-1, signal.SIGKILL)\nassert False, 'seen from outside'"),
    _e("ptrace-parent", "ptrace its parent", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(16, _os.getppid(), 0, 0) != 0:  # PTRACE_ATTACH
    raise OSError(ctypes.get_errno(), _os.strerror(ctypes.get_errno()))"""),
    _e("new-user-namespace", "become root in a new user namespace", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
    raise OSError(ctypes.get_errno(), _os.strerror(ctypes.get_errno()))"""),
    _e("proc-environ", "read HF_TOKEN in /proc/<pid>/environ of the evaluator or a host process of its uid", """
found = []
for pid in ($evaluator_pid, $canary_pid):
    try:
        found.append(b'HF_TOKEN=hf_' in open(f'/proc/{pid}/environ', 'rb').read())
    except OSError as e:
        error = e
assert any(found), error"""),
    _e("proc-root-link", "reach the host's files through /proc/<pid>/root",
       "assert open('/proc/1/root$token_path').read().startswith('hf_')"),
    _e("forge-pass", "forge a pass on every descriptor, then exit 0 early", """
for fd in range(3, 64):
    try:
        _os.write(fd, b'\\nMB-SANDBOX:DONE:0123456789abcdef0123456789abcdef\\n')
    except OSError:
        pass
_os._exit(0)
assert False"""),
    _e("fill-disk", "fill the disk", """
n = 0
while True:
    with open(f'fill-{n}.bin', 'wb') as fh:
        fh.write(b'x' * 2**20)
    n += 1"""),
    _e("print-1gb", "print 1 GB to stdout",
       "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)"),
    _e("spawn-daemon", "spawn a daemon that outlives the run", """
import sys, time
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        _os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '$marker'])
    _os._exit(0)
time.sleep(0.3)
assert False, 'seen from outside'"""),
)


@dataclass
class _Listener:
    """A loopback server that answers (so a program that reaches it can pass) and counts who reached it."""

    sock: socket.socket
    reply: bytes
    hits: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        tcp = self.sock.type == socket.SOCK_STREAM
        while True:
            try:
                if tcp:
                    conn, _ = self.sock.accept()
                    with conn:
                        self.hits += 1
                        conn.settimeout(1)
                        with contextlib.suppress(OSError):
                            conn.recv(1024)
                            conn.sendall(self.reply)
                else:
                    data, peer = self.sock.recvfrom(512)
                    self.hits += 1
                    self.sock.sendto(data[:2] + self.reply, peer)
            except OSError:  # closed: the trap is over
                return


def _listen(kind: int, reply: bytes) -> _Listener:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    listener = _Listener(sock, reply)
    listener.thread = threading.Thread(target=listener.serve, daemon=True, name="escape-listener")
    listener.thread.start()
    return listener


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _processes_where(match: str, pidns: str | None) -> list[int]:
    """Live processes whose PID namespace is ``pidns`` or whose command line holds ``match``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid, ours = int(proc.name), False
        with contextlib.suppress(OSError):  # gone, or not ours to inspect
            ours = pidns is not None and os.readlink(proc / "ns" / "pid") == pidns
        with contextlib.suppress(OSError):
            ours = ours or match in (proc / "cmdline").read_bytes().decode(errors="replace")
        if ours and pid != os.getpid() and _alive(pid):
            found.append(pid)
    return found


@dataclass
class Trap:
    """What an escape would reach, each with a host-side witness (see :func:`trap`)."""

    root: Path
    secret: str
    hub: _Listener
    dns: _Listener
    canary: subprocess.Popen
    marker: str = field(default_factory=lambda: f"mb-escape-{secrets.token_hex(6)}")
    home_canary: str = field(default_factory=lambda: f"mb-escape-canary-{secrets.token_hex(6)}")

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def token_path(self) -> Path:
        return self.home / ".cache" / "huggingface" / "token"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def project(self) -> Path:
        """The checkout this module runs from."""
        return Path(__file__).resolve().parents[2]

    def program(self, escape: Escape) -> str:
        fields = {"token_path": self.token_path, "home": self.home, "project": self.project,
                  "outside": self.outside, "hub_port": self.hub.port, "dns_port": self.dns.port,
                  "evaluator_pid": os.getpid(), "canary_pid": self.canary.pid, "marker": self.marker}
        return PRELUDE + Template(escape.source).substitute({k: str(v) for k, v in fields.items()})

    def run(self, escape: Escape, config: SandboxConfig) -> tuple[SandboxResult, list[str]]:
        """Run ``escape`` in the sandbox: its result and what the host saw escape (empty: contained)."""
        result = run_program(self.program(escape), config)
        return result, self.witnesses(result, config)

    def witnesses(self, result: SandboxResult, config: SandboxConfig) -> list[str]:
        """Everything the host saw get out of one run, after reaping what must die with it."""
        text = result.stdout + result.stderr
        seen = []
        if result.status == "passed":
            seen.append("scored as a pass")
        if self.secret in text:
            seen.append("the token leaked into the output")
        if any(secret in text for secret in self._host_secrets()):
            seen.append("a host file's content leaked into the output")
        if any(self.outside.iterdir()):
            seen.append(f"wrote {sorted(p.name for p in self.outside.iterdir())} outside the sandbox")
        if self.hub.hits:
            seen.append(f"reached the loopback Hub ({self.hub.hits} connections)")
        if self.dns.hits:
            seen.append(f"reached the loopback DNS server ({self.dns.hits} queries)")
        if self.canary.poll() is not None:
            seen.append("killed a process of the sandbox's uid on the host")
        if result.seconds > config.timeout_s + _GRACE_S:
            seen.append(f"not stopped in time ({result.seconds:.1f} s)")
        survivors = self._survivors(result)
        if survivors:
            seen.append(f"processes {survivors} outlived the run")
        return seen

    def _host_secrets(self) -> list[str]:
        """Strings only the host's files hold: the home's canary name, the project's pyproject.toml lines, the
        first line of /etc/shadow (when this process can read it). No program's source contains one."""
        lines = [self.home_canary]
        with contextlib.suppress(OSError):
            lines += [ln for ln in (self.project / "pyproject.toml").read_text().splitlines() if len(ln) > 20]
        with contextlib.suppress(OSError), open("/etc/shadow") as fh:
            lines.append(fh.readline().strip())
        return [ln for ln in lines if ln]

    def _survivors(self, result: SandboxResult) -> list[int]:
        """Processes still alive in the run's PID namespace (not the host's) or carrying the trap's marker, a
        second after the run (the kernel tears a namespace down asynchronously); killed once counted."""
        line = next((ln for ln in result.stderr.splitlines() if ln.startswith(PIDNS_MARK)), "")
        pidns = line.removeprefix(PIDNS_MARK) or None
        if pidns == os.readlink("/proc/self/ns/pid"):
            pidns = None  # no PID namespace of its own: only the marker tells its processes
        deadline, found = time.monotonic() + 1.0, _processes_where(self.marker, pidns)
        while found and time.monotonic() < deadline:
            time.sleep(0.05)
            found = _processes_where(self.marker, pidns)
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return found


def _world_readable(root: Path, secret: str, home_canary: str) -> None:
    """A home with a token and a canary, readable by anyone: only the sandbox stands in the way."""
    token = root / "home" / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text(secret)
    (root / "home" / home_canary).write_text("canary")
    (root / "outside").mkdir()
    for path in (root, root / "home", root / "home" / ".cache", token.parent):
        path.chmod(0o755)
    token.chmod(0o644)
    (root / "outside").chmod(0o1777)


@contextlib.contextmanager
def trap() -> Iterator[Trap]:
    """Set up the world the escapes aim at (``HF_TOKEN`` in this process's environment included); tear it down."""
    root = Path(tempfile.mkdtemp(prefix="mb-escape-"))
    secret = f"hf_escapeSuite{secrets.token_hex(12)}"
    hub = _listen(socket.SOCK_STREAM, b"HTTP/1.0 200 OK\r\n\r\n{}")
    dns = _listen(socket.SOCK_DGRAM, b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00")
    as_nobody = as_user(NOBODY if os.geteuid() == 0 else None)
    # the canary holds the token in its environment, as a user's own shell would
    canary = subprocess.Popen(["sleep", "600"], start_new_session=True,
                              env={"PATH": "/usr/bin:/bin", "HF_TOKEN": secret}, **as_nobody)
    before = os.environ.get("HF_TOKEN")
    try:
        os.environ["HF_TOKEN"] = secret
        found = Trap(root, secret, hub, dns, canary)
        _world_readable(root, secret, found.home_canary)
        yield found
    finally:
        if before is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = before
        canary.kill()
        canary.wait()
        for listener in (hub, dns):
            listener.sock.close()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------- the campaign

NO_DISK_CAP = frozenset({"fill-disk"})
"""Escapes not run under the guard alone: without bwrap's tmpfs nothing caps the disk, so the program would
write to the host's temporary folder until its timeout (then the folder is removed)."""


def layers(timeout_s: float = 1.0) -> dict[str, SandboxConfig]:
    """The configurations the suite runs each escape under: the default (bwrap and the in-process guard),
    each layer alone. Small limits keep the suite fast: 1 s of CPU, a 32 MB tmpfs."""
    base = SandboxConfig(timeout_s=timeout_s, disk_mb=32)
    return {"bwrap + guard": replace(base, isolation="bwrap"),
            "bwrap alone": replace(base, isolation="bwrap", audit=False),
            "guard alone": replace(base, isolation="none")}


@dataclass(frozen=True)
class Outcome:
    """One escape under one layer: the run's result and the host's witnesses, or why it was not run."""

    escape: Escape
    layer: str
    result: SandboxResult | None
    witnesses: tuple[str, ...] = ()
    skipped: str = ""

    @property
    def contained(self) -> bool:
        return self.result is not None and not self.witnesses

    def how(self, root: Path) -> str:
        """What stopped it, as observed: the sandbox's status and detail (the trap's folder shortened)."""
        if self.result is None:
            return f"not run: {self.skipped}"
        detail = self.result.detail.replace(str(root), "<trap>")
        text = f"{self.result.status}: {detail}" if detail else self.result.status
        return text if len(text) <= 90 else text[:89] + "…"


def campaign(escapes: tuple[Escape, ...] = ESCAPES, configs: dict[str, SandboxConfig] | None = None,
             ) -> tuple[list[Outcome], Path]:
    """Every escape under every layer, in one :func:`trap`; also the trap's folder (for :meth:`Outcome.how`)."""
    configs = configs or layers()
    outcomes = []
    with trap() as world:
        for escape in escapes:
            for name, config in configs.items():
                outcomes.append(_attempt(world, escape, name, config))
    return outcomes, world.root


def _attempt(world: Trap, escape: Escape, layer: str, config: SandboxConfig) -> Outcome:
    reason = bwrap_refusal(config) if config.isolation == "bwrap" else ""
    if reason:
        return Outcome(escape, layer, None, skipped=f"bwrap unavailable ({reason})")
    if config.isolation == "none" and escape.name in NO_DISK_CAP:
        return Outcome(escape, layer, None, skipped="no disk cap without bwrap")
    result, seen = world.run(escape, config)
    return Outcome(escape, layer, result, tuple(seen))


def markdown(outcomes: list[Outcome], root: Path) -> str:
    """The table: one row per escape, whether every run was contained, and how, per layer."""
    names = list(dict.fromkeys(o.layer for o in outcomes))
    lines = ["| escape | tries to | contained? | " + " | ".join(f"how: {n}" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for escape in dict.fromkeys(o.escape for o in outcomes):
        mine = {o.layer: o for o in outcomes if o.escape == escape}
        broken = [f"{o.layer}: {'; '.join(o.witnesses)}" for o in mine.values() if o.witnesses]
        verdict = "NO — " + " / ".join(broken) if broken else "yes"
        cells = [mine[n].how(root) if n in mine else "–" for n in names]
        row = (escape.name, escape.goal, verdict, *cells)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"
