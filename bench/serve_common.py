"""What bench/serve_cold_start.py and bench/serve_throughput.py share (issue 4, item 9).

Standard library only, so the benchmarks run on a bare python3: starting a server (`realm serve`
or llama.cpp's `llama-server`) on a free loopback port, polling its readiness route, streaming
one OpenAI chat completion with per-chunk timestamps, stopping the server, and describing the
machine for bench/RESULTS.md.
"""

import ctypes
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
# How often the readiness route is polled: the cold-start resolution.
POLL_INTERVAL_S = 0.005
# Bounds on every wait, so no loop runs forever.
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0
STOP_GRACE_S = 10.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Side:
    """One server under test: how to start it and which route says it is ready.

    `template` is a command line with {bin} {model} {host} {port} {threads} {slots} {ctx}
    placeholders (shell words, split with shlex after formatting).
    """

    def __init__(self, name, template, ready_path, binary, extra=""):
        self.name = name
        self.template = template + (" " + extra if extra else "")
        self.ready_path = ready_path
        self.binary = binary

    def argv(self, model, port, threads, slots=1, ctx=2048):
        line = self.template.format(bin=shlex.quote(self.binary or ""), model=shlex.quote(model),
                                    host=HOST, port=port, threads=threads, slots=slots, ctx=ctx)
        return shlex.split(line)


# The default command lines. llama-server: -np slots share -c tokens of KV cache (each slot gets
# ctx / slots); threads for decode and for prompt batches alike; the web UI off (nothing to serve).
REALM_TEMPLATE = "{bin} serve --model {model} --host {host} --port {port} --threads {threads} --max-batch {slots}"
LLAMA_TEMPLATE = ("{bin} -m {model} --host {host} --port {port} --threads {threads} "
                  "--threads-batch {threads} -np {slots} -c {ctx} --no-webui")


def sides_from_args(a):
    global MODEL_ID
    MODEL_ID = a.model_id or model_id_of(a.model)
    realm = Side("realm", a.realm_cmd or REALM_TEMPLATE, a.realm_ready_path, a.realm_bin, a.realm_extra)
    llama = Side("llama-server", a.llama_cmd or LLAMA_TEMPLATE, "/health", a.llama_server_bin, a.llama_extra)
    return realm, llama


def add_side_args(ap):
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/realm/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-id", help="the model id requests name (default: the file name without .gguf)")
    ap.add_argument("--realm-bin", default="target/release/realm")
    ap.add_argument("--llama-server-bin", required=True)
    ap.add_argument("--realm-cmd", help="command template for realm's side instead of `realm serve ...`; "
                    "placeholders {bin} {model} {host} {port} {threads} {slots} {ctx}")
    ap.add_argument("--realm-ready-path", default="/ready")
    ap.add_argument("--llama-cmd", help="command template for llama-server's side (same placeholders)")
    ap.add_argument("--realm-extra", default="", help="arguments appended to realm's command line")
    ap.add_argument("--llama-extra", default="",
                    help="arguments appended to llama-server's, e.g. --llama-extra=--no-cache-prompt (its prefix cache "
                         "reuses the chat template's shared system prompt between requests of a slot)")
    ap.add_argument("--busy-retries", type=int, default=2,
                    help="times a measurement is taken again when other processes took over 10%% of the "
                         "cores during it")
    ap.add_argument("--log-dir", help="where server logs go (default: a temporary folder)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait, before each start, for other processes to leave the cores "
                         "(under 25%% busy); the run then goes on and the busy share is recorded")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))


try:
    _PRCTL = ctypes.CDLL(None).prctl  # looked up here, not in the forked child: exec is timed
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """Runs in the child before exec: SIGTERM it when this benchmark dies, even by SIGKILL, so no
    server outlives the run (Linux prctl; elsewhere nothing)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Server:
    """A running server process, in its own process group so stop() ends all of it."""

    def __init__(self, side, argv, port, log_path):
        self.side = side
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "wb")
        # Timed from just before fork+exec: the cold start a platform sees.
        self.t_exec = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.watch = CpuWatch(self.proc.pid)

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Polls the ready route every POLL_INTERVAL_S; returns seconds from exec to the first 200."""
        deadline = self.t_exec + timeout
        polls = 0
        while True:
            polls += 1
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.side.name} exited with {self.proc.returncode} before ready; "
                                   f"log {self.log_path}:\n{tail(self.log_path)}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
                conn.request("GET", self.side.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - self.t_exec
            except OSError:
                pass  # not listening yet, or the connection was reset while it starts
            now = time.perf_counter()
            if now > deadline:
                raise RuntimeError(f"{self.side.name} not ready after {timeout:.0f} s ({polls} polls)")
            time.sleep(POLL_INTERVAL_S)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(STOP_GRACE_S)
        self.log.close()


def process_ticks(pid):
    """Clock ticks process `pid` ("self" for this one) has used, user and system, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuWatch:
    """CPU time the rest of the machine used while a measurement ran: all busy time in /proc/stat
    less the server's process and this client's. The machine is shared (builds, tests), and a
    run that competed for the cores says so in the results instead of passing for a slow one.
    """

    def __init__(self, pid):
        self.pid = pid
        self.start = self._sample()

    def _sample(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            total, idle = sum(v), v[3] + v[4]
            return total, total - idle, process_ticks(self.pid), process_ticks("self")
        except (OSError, ValueError, IndexError):
            return None

    def foreign_share(self):
        """Share of all cores' time that other processes used since construction (0..1)."""
        end = self._sample()
        if self.start is None or end is None:
            return float("nan")
        d = [b - a for a, b in zip(self.start, end)]
        if d[0] <= 0:
            return 0.0
        return max(0.0, (d[1] - d[2] - d[3]) / d[0])


def wait_quiet(limit_s=60.0, busy_share=0.25, window_s=0.5):
    """Waits (at most limit_s) until the other processes use under busy_share of the cores over
    a window; returns the last share seen, for the record."""
    deadline = time.perf_counter() + limit_s
    while True:
        w = CpuWatch(os.getpid())
        time.sleep(window_s)
        share = w.foreign_share()
        if not share > busy_share or time.perf_counter() > deadline:
            return share
        time.sleep(1.0)


def process_cpu_s(pid):
    """CPU seconds process `pid` has used (all threads), or None once it is gone."""
    try:
        return process_ticks(pid) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def wait_server_idle(pid, limit_s=10.0, window_s=0.25, busy_share=0.05):
    """Waits (at most limit_s) until server `pid` uses under busy_share of one core over a window:
    what a server does in the background after its first request (realm moves the weights it
    packed then onto huge pages, up to a few hundred ms here) would otherwise land in a
    steady-state measurement. Returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        before = process_cpu_s(pid)
        time.sleep(window_s)
        after = process_cpu_s(pid)
        if before is None or after is None or after - before < busy_share * window_s:
            break
    return time.perf_counter() - t0


BUSY_SHARE_PCT = 10.0


def measure_quietly(fn, retries, label):
    """Runs fn() (a measurement returning a dict with "other_cpu", in percent) again, up to
    `retries` times, while other processes took over BUSY_SHARE_PCT of the cores during it;
    the result keeps how many tries it took."""
    for attempt in range(retries + 1):
        out = fn()
        out["tries"] = attempt + 1
        if not out.get("other_cpu", 0) > BUSY_SHARE_PCT or attempt == retries:
            return out
        print(f"{label}: other processes took {out['other_cpu']:.0f}% of the cores; measuring again",
              file=sys.stderr)
    return out


def quiet_runs(runs):
    """The runs that other processes left alone, when there is one; else all of them (and the
    table's busy column shows it)."""
    quiet = [r for r in runs if not r.get("other_cpu", 0) > BUSY_SHARE_PCT]
    return quiet or runs


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


class StreamResult:
    def __init__(self):
        self.t_send = 0.0          # perf_counter when the request was sent
        self.t_chunks = []         # perf_counter of each SSE frame that carried content
        self.t_done = 0.0          # perf_counter after `data: [DONE]` (or the stream's end)
        self.text = []
        self.usage = None
        self.finish_reason = None
        self.error = None

    @property
    def ttft(self):
        return self.t_chunks[0] - self.t_send if self.t_chunks else None

    @property
    def tokens(self):
        """Generated tokens: the server's usage when it sent one, else one per content frame."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return len(self.t_chunks)

    @property
    def gaps(self):
        return [b - a for a, b in zip(self.t_chunks, self.t_chunks[1:])]


# The model id requests name: realm serves the file name without `.gguf` (its --model-id
# default); llama-server answers whatever id a request names.
MODEL_ID = None


def model_id_of(path):
    name = os.path.basename(path)
    return name[:-5] if name.endswith(".gguf") else name


def chat_body(prompt, max_tokens, temperature=0.0, stream=True, model=None):
    model = model or MODEL_ID or "default"
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def stream_chat(port, prompt, max_tokens, temperature=0.0, timeout=REQUEST_TIMEOUT_S):
    """One streamed chat completion; every content frame timestamped on arrival."""
    r = StreamResult()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        body = chat_body(prompt, max_tokens, temperature)
        r.t_send = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            r.error = f"HTTP {resp.status}: {resp.read(2000).decode(errors='replace')}"
            return r
        deadline = r.t_send + timeout
        while time.perf_counter() < deadline:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter()
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, `:` keep-alive comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            frame = json.loads(data)
            if "error" in frame:
                r.error = f"error frame: {frame['error']}"
                break
            if frame.get("usage"):
                r.usage = frame["usage"]
            for choice in frame.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    r.t_chunks.append(now)
                    r.text.append(content)
                if choice.get("finish_reason"):
                    r.finish_reason = choice["finish_reason"]
        r.t_done = time.perf_counter()
    except (OSError, ValueError, http.client.HTTPException) as e:
        r.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return r


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values):
    return statistics.median(values) if values else float("nan")


def spread(values, fmt="{:.1f}"):
    if not values:
        return "n/a"
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def machine():
    """CPU model, logical CPUs and the SIMD flags that matter, from /proc/cpuinfo."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    simd = sorted(x for x in flags if x.startswith(("avx", "amx", "fma", "f16c")))
    return model, os.cpu_count(), " ".join(simd)


def shown(argv):
    """A server's command line for the record: arguments only, the per-run port left out."""
    words = list(argv[1:])
    for i, w in enumerate(words[:-1]):
        if w == "--port":
            words[i + 1] = "PORT"
    return " ".join(words)


def realm_commit(side, repo_root):
    """The repo's commit when realm's side runs the repo's own release build."""
    if not side.template.startswith(REALM_TEMPLATE):
        return f"command `{side.template}`"
    built = os.path.abspath(os.path.join(repo_root, "target/release/realm"))
    if os.path.abspath(side.binary) != built:
        return f"binary {side.binary}"
    try:
        out = subprocess.run(["git", "-C", repo_root, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def llama_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).strip().splitlines()
        return next((x for x in text if x.startswith("version")), text[0] if text else "unknown")
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def record(results, lines):
    """Appends a section to bench/RESULTS.md."""
    head = []
    if not os.path.exists(results):
        head = ["# Realm vs llama.cpp\n\nAppended by the bench/ scripts, one section per run.\n"]
    with open(results, "a") as f:
        f.write("\n".join(head + lines) + "\n")
