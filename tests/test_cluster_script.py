"""scripts/slurm_ray.sbatch on the ways SLURM sites allocate GPUs (issue 18, item 13), run with bash and fake commands."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "scripts" / "slurm_gpus.sh"
SBATCH = ROOT / "scripts" / "slurm_ray.sbatch"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

SLURM_VARIABLES = ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


def _executable(path: Path, text: str) -> None:
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SLURM_VARIABLES}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    (tmp_path / "bin").mkdir(exist_ok=True)
    return {**env, **variables}


def gpus(tmp_path: Path, nvidia_smi: str | None = None, **variables: str) -> str:
    env = _env(tmp_path, **variables)
    if nvidia_smi is not None:
        _executable(tmp_path / "bin" / "nvidia-smi", f"printf '{nvidia_smi}'\n")
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {HELPER}; gpus_per_node; echo '|'; ray_gpu_flag"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    count, flag = done.stdout.split("|")
    assert flag.strip() == (f"--num-gpus={count.strip()}" if count.strip() else "")
    return count.strip()


@pytest.mark.parametrize(
    ("value", "count"), [("8", "8"), ("a100:8", "8"), ("gpu:h100:4", "4"), ("a100:4(S:0-1)", "4"), ("a100:4,v100:2", "6")]
)
def test_gpus_per_node_plain_or_typed(tmp_path, value, count):
    assert gpus(tmp_path, SLURM_GPUS_PER_NODE=value) == count


def test_gres_sites_without_gpus_per_node(tmp_path):
    assert gpus(tmp_path, SLURM_GPUS_ON_NODE="4") == "4"
    assert gpus(tmp_path, SLURM_JOB_GPUS="0,1,2") == "3"
    assert gpus(tmp_path, CUDA_VISIBLE_DEVICES="4,5") == "2"
    assert gpus(tmp_path, nvidia_smi="GPU 0: NVIDIA A100 (UUID: x)\\nGPU 1: NVIDIA A100 (UUID: y)\\n") == "2"


def test_nothing_known_leaves_the_count_to_ray(tmp_path):
    assert gpus(tmp_path) == ""
    assert gpus(tmp_path, SLURM_GPUS_PER_NODE="junk:x") == ""


@pytest.mark.parametrize("variables", [{"SLURM_GPUS_PER_NODE": "a100:8"}, {"SLURM_GPUS_ON_NODE": "4"}, {}])
def test_the_sbatch_script_starts_ray_on_every_node_with_its_gpu_count(tmp_path, variables):
    """The whole script with srun, scontrol, ray and donors faked: what each `ray start` is told."""
    work = tmp_path / "repo"
    (work / "scripts").mkdir(parents=True)
    shutil.copy(HELPER, work / "scripts")
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "activate").write_text("")
    log = tmp_path / "calls.log"
    env = _env(tmp_path, SLURM_JOB_NODELIST="n[1-2]", SLURM_CPUS_PER_TASK="16", SLURM_SUBMIT_DIR=str(work), **variables)
    binary = tmp_path / "bin"
    _executable(binary / "scontrol", "echo n1; echo n2\n")
    # srun: drop its own options (-w takes a value), run the command
    _executable(binary / "srun", 'while [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done; exec "$@"\n')
    _executable(binary / "hostname", "echo 10.0.0.1\n")
    _executable(binary / "sleep", "true\n")
    _executable(binary / "ray", f'echo "ray $*" >> {log}\n')
    _executable(binary / "donors", f'echo "donors $*" >> {log}\n')
    done = subprocess.run(["bash", str(SBATCH), "study.yaml"], env=env, cwd=work, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    starts = sorted(line for line in calls if line.startswith("ray start"))
    flag = {"SLURM_GPUS_PER_NODE": " --num-gpus=8", "SLURM_GPUS_ON_NODE": " --num-gpus=4"}.get(next(iter(variables), ""), "")
    assert starts == [
        f"ray start --address=10.0.0.1:6379 --num-cpus=16{flag} --block",
        f"ray start --head --node-ip-address=10.0.0.1 --port=6379 --num-cpus=16{flag} --block",
    ]
    assert "donors run study.yaml" in calls and "ray status" in calls  # ray start runs in the background: order varies
