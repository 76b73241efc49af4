"""agentd keeps working under the unit's main restrictions, applied here without systemd.

``ondevice-agent.service`` runs agentd as an unprivileged user with NoNewPrivileges=, PrivateNetwork=
(only AF_UNIX is used), MemoryDenyWriteExecute= and no capabilities. This test applies the same
restrictions with the kernel's own tools — ``unshare --net``, ``setpriv --reuid/--regid/--clear-groups
--no-new-privs --inh-caps=-all`` and ``prctl(PR_SET_MDWE)`` (what systemd uses for
MemoryDenyWriteExecute on kernels that have it) — and checks that agentd (and its ONNX Runtime
workers, which inherit all of it) loads, warms and serves a model.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from svc_helpers import NotifySocket, ServiceUsers

from agent.client import Client

pytestmark = pytest.mark.integration

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

_EXEC_WITH_MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    raise SystemExit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def _interpreter_for(user: ServiceUsers, env: dict[str, str]) -> str | None:
    """An interpreter the unprivileged user can exec (and re-exec, as the daemon does for workers).

    A venv whose base interpreter lives under /root (pyenv in CI) is not reachable by other users;
    the system python3 of the same minor version with our site-packages on PYTHONPATH is.
    """
    probe = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', 'import numpy, onnxruntime, agent'])"
    u = user.outsider
    for cand in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(cand):
            continue
        r = subprocess.run(["setpriv", "--reuid", str(u.pw_uid), "--regid", str(u.pw_gid), "--clear-groups",
                            cand, "-c", probe], env=env, capture_output=True, timeout=60, check=False)
        if r.returncode == 0:
            return cand
    return None


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_agentd_serves_as_unprivileged_user_without_network_and_with_wx_memory_denied(
        test_users: ServiceUsers, shared_tmp: Path) -> None:
    pytest.importorskip("onnx")
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE")
    from agent.testing import make_tensor_zoo

    user = test_users.outsider
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "PYTHONPATH": os.pathsep.join([sysconfig.get_path("purelib"), str(Path(__file__).resolve().parents[2])])}
    py = _interpreter_for(test_users, env)
    if py is None:
        pytest.skip("no Python interpreter the unprivileged test user can execute")
    make_tensor_zoo(shared_tmp / "zoo", "mlp", in_features=16, hidden=32, out_features=4)
    for p in [shared_tmp / "zoo", *(shared_tmp / "zoo").rglob("*")]:  # readable like /var/lib/…/zoo
        p.chmod(0o755 if p.is_dir() else 0o644)
    state = shared_tmp / "state"
    state.mkdir()
    os.chown(state, user.pw_uid, user.pw_gid)
    notify = shared_tmp / "notify"
    import socket

    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    os.chmod(notify, 0o666)
    nsock = NotifySocket(str(notify), ns)
    sock_path = state / "agent.sock"
    env["NOTIFY_SOCKET"] = str(notify)
    cmd = ["unshare", "--net", "--",
           "setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups",
           "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
           py, "-c", _EXEC_WITH_MDWE, py, "-m", "agent.daemon", "--zoo", str(shared_tmp / "zoo"),
           "--state-dir", str(state), "--socket", str(sock_path), "--spare-workers", "0"]
    log = shared_tmp / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not any("READY=1" in m for _, m in nsock.drain(0.2)):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(log.read_text())
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{user.pw_uid}" in status and "NoNewPrivs:\t1" in status
        assert "CapEff:\t0000000000000000" in status
        with Client(sock_path) as c:
            st = c.status()
            assert "mlp" in st["models"], (st, log.read_text())
            worker = st["models"]["mlp"]["active"]["pid"]
            r = c.infer("mlp", {"x": np.ones((3, 16), np.float32)})
        assert r.outputs["y"].shape == (3, 4)
        wstatus = Path(f"/proc/{worker}/status").read_text()
        assert f"Uid:\t{user.pw_uid}" in wstatus and "NoNewPrivs:\t1" in wstatus
        # same (empty) network namespace as the daemon, not the host's
        assert os.readlink(f"/proc/{worker}/ns/net") != os.readlink("/proc/self/ns/net")
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        ns.close()
