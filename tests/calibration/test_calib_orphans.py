"""Nothing a validation starts outlives it: killed with SIGKILL (no clean-up runs), its
server process (with the server's containers) and its speed probe stop by themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clipperlab.calibration.server import child_pids
from tests.calibration.test_calib_hostcpu import NOOP_DEPLOY

DRIVER = """
import os, sys, time
from pathlib import Path
from clipperlab.calibration.quiet import SpeedMonitor, probe_cpus
from clipperlab.calibration.server import ServerProcess, real_deployment

tmp = Path(sys.argv[1])
with SpeedMonitor(tmp / "speed.txt", cpus=probe_cpus()) as mon, ServerProcess(
        real_deployment(tmp / "deploy.toml"), cache=False) as srv:
    srv.wait_ready("hello")
    print(*(p.pid for p in mon._procs), srv.proc.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False




def test_a_killed_validation_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGKILL to a process holding a ``SpeedMonitor`` (a probe pinned to each core) and a
    ``ServerProcess``: the probes, the server and its container are all gone soon after
    (they poll for their parent)."""
    (tmp_path / "deploy.toml").write_text(NOOP_DEPLOY)
    drv = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)],
                           stdout=subprocess.PIPE, text=True)
    watched: list[int] = []
    try:
        assert drv.stdout is not None
        *probes, server = (int(x) for x in drv.stdout.readline().split())
        until = time.monotonic() + 60
        while not child_pids(server) and time.monotonic() < until:
            time.sleep(0.1)
        containers = child_pids(server)
        assert containers and probes and all(_alive(p) for p in [*probes, server])
        drv.send_signal(signal.SIGKILL)
        drv.wait()
        watched += [*probes, server, *containers]
        until = time.monotonic() + 60
        while any(_alive(p) for p in watched) and time.monotonic() < until:
            time.sleep(0.2)
        assert not [p for p in watched if _alive(p)]
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
        for p in watched:  # what a failure left running
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_the_server_and_its_containers_are_sessions_of_their_own(tmp_path: Path) -> None:
    """A session is a scheduling group where the kernel groups by session (autogroup):
    the server a validation starts leads a session of its own, apart from the
    validation's (where the load generator runs) and its container's, so that each
    competes for a core as one process, as the twin's host CPU model has it; and
    ``session_groups`` names each one's group."""
    from clipperlab.calibration.server import ServerProcess, real_deployment

    (tmp_path / "deploy.toml").write_text(NOOP_DEPLOY)
    with ServerProcess(real_deployment(tmp_path / "deploy.toml"), cache=False) as srv:
        srv.wait_ready("hello")
        server = srv.proc.pid
        assert server is not None
        assert os.getsid(server) == server != os.getsid(0)
        containers = child_pids(server)
        assert containers and all(os.getsid(c) == c for c in containers)
        groups = srv.session_groups()
        assert set(groups) <= {"frontend", "loadgen", "container:noop"}
        named = [groups[k] for k in ("frontend", "loadgen", "container:noop") if k in groups]
        if named and "off" not in named:  # the kernel groups by session: each a group apart
            # (a process outside any session group, such as a CI runner's, the kernel
            # does not name: it is left out, and the others must still differ)
            assert "frontend" in groups and "container:noop" in groups
            assert len(set(named)) == len(named)
