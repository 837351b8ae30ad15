"""A real two-node Ray cluster on this machine, started with ``ray start``: a head node (the driver's) and
a worker node with its own temporary folder, an empty ``MINARI_DATASETS_PATH`` and a GPU resource it has
no CUDA for. Each node advertises a custom resource, so a test can find and target it. Every process it
starts is found by the cluster's own folder in its command line (or as a child of one) and ended by id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_RESOURCE = "offbench_test_head"
WORKER_RESOURCE = "offbench_test_worker"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to read its status."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Cluster:
    def __init__(self, driver_minari: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="obr-", dir="/tmp"))  # short: Ray's socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker_minari = self.base / "worker-minari"
        self.worker_tmp = self.base / "worker-tmp"
        self.worker_minari.mkdir()
        self.worker_tmp.mkdir()
        self.common = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",  # a throwaway local cluster; no token to distribute
            "RAY_USAGE_STATS_ENABLED": "0",
            # A dead node is noticed within a few seconds (the default waits about a minute).
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "4",
        }
        self.head_env = {**self.common, "MINARI_DATASETS_PATH": str(driver_minari)}
        self.start(
            "--head",
            f"--port={self.port}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--resources={json.dumps({HEAD_RESOURCE: 1})}",
            f"--temp-dir={self.base / 'head'}",
            "--include-dashboard=false",
            env=self.head_env,
        )
        self.start_worker()

    def start_worker(self) -> None:
        env = {
            **self.common,
            "MINARI_DATASETS_PATH": str(self.worker_minari),
            "OGBENCH_DATA_DIR": str(self.worker_minari),
            "TMPDIR": str(self.worker_tmp),
        }
        self.start(
            f"--address={self.address}",
            "--num-cpus=1",
            "--num-gpus=1",
            f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
            f"--temp-dir={self.base / 'worker'}",
            env=env,
        )

    def start(self, *args: str, env: dict[str, str]) -> None:
        subprocess.run(
            [RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )

    def processes(self, folder: Path | None = None) -> list[int]:
        """Every process of the cluster (or of one node's folder): those naming its folder, and their
        descendants (Ray's agents and workers)."""
        marker = str(folder or self.base)
        roots = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and marker in command_line(int(p.name))
        ]
        found, queue = set(), list(roots)
        while queue:
            pid = queue.pop()
            if pid not in found:
                found.add(pid)
                queue += children(pid)
        return sorted(pid for pid in found if alive(pid) and pid != os.getpid())

    def raylet(self, folder: Path) -> int:
        (pid,) = [pid for pid in self.processes(folder) if "/raylet/raylet " in command_line(pid)]
        return pid

    def stop(self) -> list[int]:
        """End every process the cluster started; returns any still alive (none expected)."""
        pids = self.processes()
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + wait
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = [pid for pid in pids if alive(pid)]
            if not pids:
                break
        return pids
