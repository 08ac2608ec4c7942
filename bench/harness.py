"""Shared plumbing of the benchmarks: processes, wrk runs, machine facts, tables.

Benchmarks here compare several targets side by side in one run, on a shared and noisy
2-core machine, so the plumbing has three jobs: start every server pinned where the
benchmark says (``taskset``) and always stop it again, even on Ctrl-C or a crash (each
child gets its own process group, and an ``atexit`` hook stops whatever is left); drive
load with ``wrk`` (C, one thread, next to no CPU per request, so the load generator is
not what is measured) and read its latency histogram as JSON from a Lua ``done()``; and
record what the machine was doing (load average before and after each point) so a
disturbed run can be told from a slow one.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
APP_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
BENCH_VENV = BENCH_DIR / ".venv-litellm"
_JSON_MARKER = "BENCH_JSON "


# --- machine -------------------------------------------------------------------------


def load_average() -> float:
    """One-minute load average: above ~0.5 on an idle 2-core box, others are busy."""
    return os.getloadavg()[0]


def machine_info() -> dict[str, object]:
    """What the docs must say next to every table: cores, CPU model, load, date."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    git = ["git", "-C", str(REPO_ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "services", "models"],
                           capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uptime": uptime.strip(),
        # the code measured: the gateway changes under a benchmark's feet otherwise
        "commit": commit or None,
        "uncommitted_app_files": len(dirty),
    }


def _cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat."""
    times = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            times.append((sum(values) - idle, sum(values)))
    return times


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process and its live descendants
    have used so far, from /proc."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces
        stats[int(entry.name)] = (int(fields[1]),
                                  (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    tree, total = {pid}, 0.0
    for _ in range(8):  # a few levels of children are plenty
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_busy(seconds: float = 1.0) -> float:
    """Busy fraction of the whole machine over ``seconds`` (0..1), from /proc/stat.

    Unlike the load average (a minute-long moving average that also counts our own
    servers) this says whether someone else is using the cores right now.
    """
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    busy = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    total = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return busy / total if total else 0.0


def wait_quiet(max_busy: float, timeout_s: float) -> float:
    """Wait (up to ``timeout_s``) until other jobs leave the cores mostly idle.

    Called between measurements, when nothing of ours is busy, so the busy fraction is
    other people's work. Returns the last fraction seen; the caller records it, so a
    point measured on a busy machine (timeout reached) is visible in the results.
    """
    deadline = time.monotonic() + timeout_s
    busy = cpu_busy()
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return busy


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: {hint}")
    return path


# --- processes -----------------------------------------------------------------------


class Service:
    """A server the benchmark started: own process group, log file, always stopped.

    ``cpus`` pins it with ``taskset -c`` so the component under test and the load
    generator never share a core by accident.
    """

    _live: list[Service] = []

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        cpus: str | None = None,
        env: Mapping[str, str | None] | None = None,
        cwd: Path | None = None,
        log_dir: Path,
    ) -> None:
        """``env`` adds to this process's environment; a None value removes a variable."""
        self.name = name
        self.cmd = (["taskset", "-c", cpus] if cpus else []) + list(cmd)
        merged: dict[str, str | None] = {**os.environ, **(env or {})}
        self.env = {k: v for k, v in merged.items() if v is not None}
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> Service:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        Service._live.append(self)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    def python_pid(self) -> int:
        """The pid of the Python server itself (``taskset`` execs, so it is the same)."""
        return self.pid

    def wait_http(self, url: str, *, timeout_s: float = 120.0, headers: dict | None = None) -> None:
        """Poll ``url`` until it answers 200; fail at once if the process exits."""
        deadline = time.monotonic() + timeout_s
        last = ""
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(url, headers=headers)
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready at {url} ({last}):\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP the group, so an idle server's background loops cannot steal its core."""
        if self.proc is not None and not self.paused:
            os.killpg(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            os.killpg(self.pid, signal.SIGCONT)
            self.paused = False

    def stop(self, grace_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if self.paused:
                os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the leader left behind
        except ProcessLookupError:
            pass
        proc.wait()
        if self in Service._live:
            Service._live.remove(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @classmethod
    def stop_all(cls) -> None:
        for service in reversed(list(cls._live)):
            service.stop(grace_s=10.0)


atexit.register(Service.stop_all)


def stop_on_signals() -> None:
    """Turn SIGTERM into SystemExit, so ``atexit`` stops every child on ``kill``."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def bench_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- wrk -----------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal that cannot be closed early by its content."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


_LUA_DONE = r"""
done = function(summary, latency, requests)
  local p = {}
  for _, q in ipairs({50, 90, 95, 99, 99.9}) do
    p[#p + 1] = string.format('"%s":%.1f', tostring(q), latency:percentile(q))
  end
  local tokens, ok = 0, 0
  for _, t in ipairs(threads) do
    tokens = tokens + (t:get("tokens") or 0)
    ok = ok + (t:get("ok") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"mean_us":%.1f,"stdev_us":%.1f,"max_us":%.1f,"tokens":%d,"ok":%d,' ..
    '"percentiles_us":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.stdev, latency.max, tokens, ok,
    table.concat(p, ",")))
end
"""

_LUA_THREADS = """
threads = {}
setup = function(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
"""


UNIQUE_MARKER = "__BENCH_SEQ__"


def wrk_post_script(path: str, bodies: Sequence[str], headers: Mapping[str, str], *,
                    count_tokens: bool = False) -> str:
    """A wrk script that POSTs ``bodies`` in turn and reports its histogram as JSON.

    A body holding ``UNIQUE_MARKER`` gets a per-request sequence number there, so no two
    requests are alike (a response cache sees only misses). With ``count_tokens`` every
    200 answer's ``completion_tokens`` is added up (the last occurrence in the body: the
    usage chunk of a stream, or the usage object), so throughput is measured in the
    tokens the server says it generated.
    """
    header_lines = "\n".join(
        f"headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items()
    )
    rows = []
    for body in bodies:
        head, marker, tail = body.partition(UNIQUE_MARKER)
        rows.append(f"{{ {lua_string(head)}, {lua_string(tail) if marker else 'nil'} }}")
    body_list = ",\n".join(rows)
    response_fn = ""
    if count_tokens:
        response_fn = r"""
tokens = 0
ok = 0
response = function(status, hdrs, body)
  if status == 200 then
    local n = nil
    for m in string.gmatch(body, '"completion_tokens"%s*:%s*(%d+)') do n = m end
    if n then
      tokens = tokens + tonumber(n)
      ok = ok + 1
    end
  end
end
"""
    return f"""
{_LUA_THREADS}
local path = {lua_string(path)}
local headers = {{}}
{header_lines}
local bodies = {{
{body_list}
}}
local i = 0
local salt = ""
init = function(args)
  i = (id or 1) * 7919
  -- runs last >= 1 s, so consecutive runs never share a start second
  salt = tostring(os.time()) .. "-" .. tostring(id or 1) .. "-"
end
request = function()
  i = i + 1
  local b = bodies[(i % #bodies) + 1]
  local body = b[1]
  if b[2] ~= nil then body = b[1] .. salt .. tostring(i) .. b[2] end
  return wrk.format("POST", path, headers, body)
end
{response_fn}
{_LUA_DONE}
"""


@dataclass
class WrkResult:
    """One wrk run: latency percentiles in milliseconds, throughput, errors, load."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    tokens: int = 0
    ok: int = 0
    load_before: float = 0.0
    load_after: float = 0.0
    busy_before: float = 0.0  # machine busy fraction just before (others' work)
    cpu_ms_per_request: float | None = None  # the measured server's CPU, when known
    raw: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("raw")
        return data


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    cpus: str | None = None,
    threads: int = 1,
    timeout_s: float = 30.0,
) -> WrkResult:
    """Run wrk once and parse the JSON line its ``done()`` prints."""
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    load_before = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    load_after = load_average()
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_JSON_MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )
    data = json.loads(line[len(_JSON_MARKER):])
    pct = data["percentiles_us"]
    duration = data["duration_us"] / 1e6
    errors = sum(
        int(data[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        connections=connections,
        duration_s=duration,
        requests=int(data["requests"]),
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=pct["50"] / 1000,
        p90_ms=pct["90"] / 1000,
        p95_ms=pct["95"] / 1000,
        p99_ms=pct["99"] / 1000,
        p999_ms=pct["99.9"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        tokens=int(data.get("tokens", 0)),
        ok=int(data.get("ok", 0)),
        load_before=load_before,
        load_after=load_after,
        raw=data,
    )


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


# --- profiles ------------------------------------------------------------------------

# Frames every sample passes through (CLI, server loop, thread start-up): their
# inclusive share is ~100% and says nothing about the request path.
_ENTRY_FILES = (
    "optengine", "services/cli", "typer/", "click/", "asyncio/runners", "uvicorn/main",
    "uvicorn/server", "uvicorn/_compat", "threading", "concurrent/futures/thread",
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, object]:
    """Self and inclusive shares of functions, and self share per package, from py-spy raw.

    Self share says where the CPU is spent; inclusive share says which call on the
    request path is worth making cheaper (it includes everything below it).
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    package_counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match:
                names.append(f"{match['func']} ({_short_file(match['file'])})")
            else:
                names.append(frame)
        self_counts[names[-1]] += count
        for name in set(names):
            if not name.rsplit("(", 1)[-1].startswith(_ENTRY_FILES):
                incl_counts[name] += count
        leaf_file = names[-1].rsplit("(", 1)[-1].rstrip(")")
        package_counts[_package_of(leaf_file)] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, object]]:
        return [
            {"function": name, "share": round(c / total, 4)}
            for name, c in counter.most_common(n)
        ] if total else []

    return {
        "samples": total,
        "self": share(self_counts, top),
        "inclusive": share(incl_counts, top * 3),
        "packages": share(package_counts, top),
    }


def _package_of(file: str) -> str:
    head = file.split("/", 1)[0]
    if head == "services" and "/" in file:
        return "/".join(file.split("/")[:2])
    return head.removesuffix(".py") or "?"


# --- output --------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-markdown table: readable in a terminal and pasted as-is into the docs."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in text_rows
    ]
    return "\n".join([line, sep, *body])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def print_json_line(payload: Mapping[str, object]) -> None:
    """The one machine-readable line every benchmark ends with."""
    print(json.dumps(payload, separators=(",", ":"), default=str))
