# Sourced by scripts/slurm_ray.sbatch (and tests/test_cluster_script.py): how many GPUs this node of the
# allocation has, whatever way the site asked for them.
#
#   --gpus-per-node=8       SLURM_GPUS_PER_NODE=8
#   --gpus-per-node=a100:8  SLURM_GPUS_PER_NODE=a100:8 (typed; also gpu:a100:8, or a100:4,v100:2 summed)
#   --gres=gpu:4            SLURM_GPUS_PER_NODE unset; SLURM_GPUS_ON_NODE=4 inside a step, or
#                           SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES=0,1,2,3
#   none of these           one line per GPU from `nvidia-smi -L`
#
# Prints a count, or nothing when none of these says (then `ray start` detects the GPUs itself).

_count_gpu_spec() {
  # "a100:8" -> 8, "8" -> 8, "gpu:a100:8(S:0-1)" -> 8, "a100:4,v100:2" -> 6
  local spec=$1 total=0 part count
  local IFS=,
  for part in $spec; do
    part=${part%%(*}
    count=${part##*:}
    [[ $count =~ ^[0-9]+$ ]] || return 1
    total=$((total + count))
  done
  echo "$total"
}

_count_id_list() {
  # "0,1,2,3" -> 4; "" -> nothing
  local list=$1
  [[ -n $list && $list != "-1" && $list != "NoDevFiles" ]] || return 1
  local IFS=,
  local ids=($list)
  echo "${#ids[@]}"
}

gpus_per_node() {
  if [[ -n ${SLURM_GPUS_PER_NODE:-} ]] && _count_gpu_spec "$SLURM_GPUS_PER_NODE"; then return 0; fi
  if [[ ${SLURM_GPUS_ON_NODE:-} =~ ^[0-9]+$ ]]; then echo "$SLURM_GPUS_ON_NODE"; return 0; fi
  if _count_id_list "${SLURM_JOB_GPUS:-}"; then return 0; fi
  if _count_id_list "${CUDA_VISIBLE_DEVICES:-}"; then return 0; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    local n
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if [[ $n =~ ^[0-9]+$ && $n -gt 0 ]]; then echo "$n"; return 0; fi
  fi
  return 0
}

# The `ray start` flag for this node's GPUs, or nothing (Ray then detects them).
ray_gpu_flag() {
  local n
  n=$(gpus_per_node)
  [[ -n $n ]] && echo "--num-gpus=$n"
  return 0
}
