"""Stop requests of the training run (``training.stop.StopRequest``): signals, the stop file, agreement over
ranks; and the shell side in slurm/ without a Slurm (dry runs, task environment, shellcheck). The
runs under a real Slurm are in tests/slurm/."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from nemo_resrl.training.stop import PREEMPTED_EXIT, Preempted, StopRequest

ROOT = Path(__file__).resolve().parents[2]


def test_signals_and_the_stop_file_ask_to_stop(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest(str(tmp_path / "stop"), ["USR1", "TERM"])
    stop.install()
    try:
        assert stop.poll() == ""
        (tmp_path / "stop").touch()
        assert stop.poll() == "stop file"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.poll() == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # the first SIGTERM is a request too (the higher one)
        assert stop.poll() == "SIGTERM"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_processes_started_for_the_first_save_survive_the_stop_signals(tmp_path):
    """Slurm signals every process of a step; the helpers the first checkpoint save starts must live."""
    stop = StopRequest(None, ["USR1", "TERM"])
    stop.install()
    try:
        with stop.held():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        os.kill(child.pid, signal.SIGTERM)
        os.kill(child.pid, signal.SIGUSR1)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1)
        child.kill()
        child.wait()
        os.kill(os.getpid(), signal.SIGUSR1)  # handled again after the block
        assert stop.poll() == "SIGUSR1"
    finally:
        stop.restore()


def test_a_signal_during_the_first_save_is_held_then_acted_on_not_lost():
    stop = StopRequest(None, ["USR1", "TERM"])
    stop.install()
    try:
        with stop.held():
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while the save runs: pending, or taken by a
            # thread that does not block it; either way recorded, never ignored (it used to be lost)
        assert stop.poll() == "SIGUSR1"  # the run stops after this step
    finally:
        stop.restore()


def test_a_second_sigterm_kills_at_once(tmp_path):
    code = textwrap.dedent(
        """
        import os, signal, time
        from nemo_resrl.training.stop import StopRequest
        s = StopRequest(None, ["TERM"]); s.install()
        os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1); assert s.poll() == "SIGTERM"
        print("first handled", flush=True)
        os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print("survived")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGTERM and "first handled" in res.stdout, res.stderr[-2000:]
    assert "survived" not in res.stdout


def test_preempted_exits_with_status_75():
    res = subprocess.run(
        [sys.executable, "-c", "from nemo_resrl.training.stop import Preempted as P; raise P(3, 'x', 'y')"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == PREEMPTED_EXIT == 75
    assert "preempted at step 3 (SIGUSR1)" in str(Preempted(3, "SIGUSR1", "x"))


def _poll_rank(rank: int, world: int, init: str, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    stop = StopRequest(None, [])
    first = stop.poll()
    if rank == 1:
        stop.reason = "SIGUSR1"  # as the handler records it: only rank 1 got the signal
    out.put((rank, first, stop.poll()))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_ranks_agree_on_a_request_only_one_rank_got(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init = f"file://{tmp_path / 'store'}"
    procs = [ctx.Process(target=_poll_rank, args=(r, 2, init, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == [(0, "", "SIGUSR1"), (1, "", "SIGUSR1")]


# ---------------------------------------------------------------------------- the shell side


_SCRIPT_ENV = ("MASTER_", "RUN_DIR", "OUTPUT_ROOT", "LAUNCHER", "NPROC_PER_NODE", "DRY_RUN", "PYTHON")


def _bash(script: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a script with ``env`` over an environment without Slurm's or the scripts' own variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", *_SCRIPT_ENV))}
    return subprocess.run(
        ["bash", script, *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_gpu_script_launches_one_task_per_gpu_with_the_overrides(tmp_path):
    env = {
        "DRY_RUN": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "resrl",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "NEMO_RESRL_ROOT": str(ROOT),
        "MASTER_ADDR": "gpu07",
        "PYTHON": "/opt/py",
    }
    args = (
        "model=qwen3_8b",
        "actor.hf_path=/models/Qwen3-8B",
        "data.path=/data/math.jsonl",
        "algorithm=grpo",
    )
    res = _bash(str(ROOT / "slurm" / "resrl.sbatch"), *args, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    launch = next(line for line in res.stdout.splitlines() if "launch: " in line).split("launch: ")[1]
    run_dir = tmp_path / "runs" / "resrl-4242"
    assert launch.startswith(
        "srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=8 --gpu-bind=none "
    )
    assert f"--output={run_dir}/logs/attempt0/rank%t.log" in launch
    train = f"-m nemo_resrl.cli train {' '.join(args)} logging.run_dir={run_dir}"
    assert launch.endswith(f"bash {ROOT}/slurm/task.sh /opt/py {train}")
    assert "master gpu07:24242" in res.stdout
    # torchrun per node instead; a logging.run_dir override chooses the run directory
    env.update(LAUNCHER="torchrun", SLURM_RESTART_COUNT="2")
    res = _bash(str(ROOT / "slurm" / "resrl.sbatch"), *args, "logging.run_dir=mine", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    launch = next(line for line in res.stdout.splitlines() if "launch: " in line).split("launch: ")[1]
    assert launch.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 ")
    assert "--nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu07:24242" in launch
    assert f"--log-dir={tmp_path}/mine/logs/attempt2/torchrun" in launch
    assert launch.endswith("-m nemo_resrl.cli train " + " ".join(args) + " logging.run_dir=mine")


def test_task_script_maps_the_slurm_task_to_torch_distributed(tmp_path):
    env = {
        "SLURM_PROCID": "11",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "3",
        "SLURM_NODEID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "24242",
    }
    res = _bash(str(ROOT / "slurm" / "task.sh"), "env", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    want = {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1"}
    assert {k: got.get(k) for k in want} == want and got["MASTER_ADDR"] == "gpu07"
    # one task: no torch.distributed variables (the trainer starts its own world of one)
    env.update(SLURM_NTASKS="1", SLURM_PROCID="0")
    res = _bash(str(ROOT / "slurm" / "task.sh"), "env", env=env, cwd=tmp_path)
    assert "RANK=" not in res.stdout.replace("SLURM_", "")


def test_task_script_picks_the_interface_that_reaches_the_master_on_several_nodes(tmp_path):
    env = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "MASTER_ADDR": "127.0.0.1",
    }
    res = _bash(str(ROOT / "slurm" / "task.sh"), "env", env=env, cwd=tmp_path)
    got = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    if shutil.which("ip"):
        assert got.get("GLOO_SOCKET_IFNAME") == got.get("NCCL_SOCKET_IFNAME") == "lo", res.stdout
    env["SOCKET_IFNAME"] = "ib0"  # the user's choice wins
    res = _bash(str(ROOT / "slurm" / "task.sh"), "env", env=env, cwd=tmp_path)
    got = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert got["GLOO_SOCKET_IFNAME"] == got["NCCL_SOCKET_IFNAME"] == "ib0"
    env["SLURM_JOB_NUM_NODES"] = "1"  # one node: left to the libraries
    res = _bash(str(ROOT / "slurm" / "task.sh"), "env", env=env, cwd=tmp_path)
    assert "GLOO_SOCKET_IFNAME=" not in res.stdout


def test_slurm_scripts_pass_shellcheck():
    from tests.slurm.cluster import Unavailable, apt_install, which

    try:
        apt_install(["shellcheck"], ["shellcheck"], timeout_s=600)
    except Unavailable as e:
        pytest.skip(f"no shellcheck: {e}")
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "slurm").glob("*.sh"))
    scripts += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "slurm").glob("*.sbatch"))
    scripts += ["tests/slurm/probe.sbatch"]
    scripts += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.sh"))
    assert len(scripts) >= 5
    res = subprocess.run(
        [which("shellcheck") or shutil.which("shellcheck"), "-x", *scripts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_stop_signals_are_armed_before_torch_is_imported():
    """``nemo-resrl train`` arms the stop protocol at its first line; before, the stop module imported torch
    (about a second), and a SIGUSR1 / SIGTERM in that second killed the run (status 138 / 143, no
    preempted.json)."""
    import subprocess
    import sys

    code = (
        "import sys, signal\n"
        "import nemo_resrl.cli\n"
        "from nemo_resrl.training.stop import StopRequest\n"
        "s = StopRequest.from_env(); s.install()\n"
        "assert 'torch' not in sys.modules, 'torch was imported before the signals were armed'\n"
        "assert signal.getsignal(signal.SIGUSR1) == s._handle\n"
        "print('ARMED')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ARMED" in res.stdout, res.stderr[-2000:]
