"""e3md.cores: with ``E3MD_IDLE=spin`` (or :func:`keep_cores_awake`) one ``SCHED_IDLE`` thread
spins on each CPU the process may use, and :func:`let_cores_sleep` stops them; by default
there are none (each case in a fresh process: the threads are per process)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from e3md.nn import cpu_kernels

pytestmark = [
    pytest.mark.skipif(platform.system() != "Linux", reason="SCHED_IDLE is Linux's"),
    pytest.mark.skipif(cpu_kernels._compiler() is None, reason="no C++ compiler"),
]

# the process's threads at SCHED_IDLE with their CPUs and state; the CPU time the process takes
# while its main thread sleeps
SCRIPT = """
import json, os, sys, time
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
import e3md
from e3md import cores

def idle_threads():  # [CPUs, state] of each SCHED_IDLE thread (R: running or runnable)
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    return sorted([sorted(os.sched_getaffinity(t)),
                   open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[0]]
                  for t in tids if os.sched_getscheduler(t) == os.SCHED_IDLE)

got = {}
if len(sys.argv) > 1:
    got["started"] = [cores.keep_cores_awake(), cores.keep_cores_awake()]
got["allowed"] = sorted(os.sched_getaffinity(0))
got["awake"] = cores.cores_awake()
got["idle"] = idle_threads()
t0 = time.process_time(); time.sleep(0.3)
got["cpu"] = time.process_time() - t0
got["stopped"] = cores.let_cores_sleep()
got["after"] = [idle_threads(), cores.cores_awake()]
print(json.dumps(got))
"""


def _run(env_mode=None, cpus=None):
    env = dict(os.environ)
    env.pop("E3MD_IDLE", None)
    if env_mode is not None:
        env["E3MD_IDLE"] = env_mode
    args = [sys.executable, "-c", SCRIPT] + ([cpus] if cpus else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RuntimeWarning" not in out.stderr, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_one_idle_priority_thread_spins_on_each_cpu_until_stopped():
    got = _run("spin")
    allowed = got["allowed"]
    assert got["awake"] == len(allowed)
    # one thread pinned to each CPU, spinning (never asleep)
    assert got["idle"] == [[[c], "R"] for c in allowed]
    assert got["stopped"] == len(allowed)
    assert got["after"] == [[], 0]


def test_started_by_hand_on_the_cpus_the_process_may_use():
    cpus = sorted(os.sched_getaffinity(0))[:1]
    got = _run(cpus=",".join(map(str, cpus)))
    assert got["started"] == [1, 1]  # a second call starts nothing more
    assert got["idle"] == [[cpus, "R"]]
    assert got["after"] == [[], 0]


def test_none_by_default():
    got = _run()
    assert got["awake"] == 0 and got["idle"] == [] and got["stopped"] == 0
    assert got["cpu"] < 0.1


def test_an_unknown_mode_is_a_clear_error():
    env = dict(os.environ, E3MD_IDLE="poll")
    out = subprocess.run(
        [sys.executable, "-c", "import e3md"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "E3MD_IDLE must be 'spin' or 'system'" in out.stderr


def test_a_forked_child_has_none_and_can_start_its_own():
    script = """
import json, os
os.environ["E3MD_IDLE"] = "spin"
import e3md
from e3md import cores
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    got = [cores.cores_awake(), cores.let_cores_sleep(), cores.keep_cores_awake() > 0,
           cores.let_cores_sleep() > 0]
    os.write(w, json.dumps(got).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps([json.loads(os.read(r, 1000)), cores.cores_awake() > 0]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    child, parent_awake = json.loads(out.stdout.splitlines()[-1])
    assert child == [0, 0, True, True]
    assert parent_awake
