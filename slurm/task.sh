#!/usr/bin/env bash
# One task of `srun` (LAUNCHER=srun in slurm/common.sh): the torch.distributed environment from Slurm's,
# then exec the command (so the task's signals reach python itself).
#
#   srun ... bash slurm/task.sh PYTHON -m nemo_resrl.cli train OVERRIDE...
#
# MASTER_ADDR / MASTER_PORT come from the batch script (the first node of the allocation).
set -euo pipefail
if [ "${SLURM_NTASKS:-1}" = 1 ]; then
  exec "$@" # one process: nemo_resrl starts its own world of one (no port needed)
fi
export RANK=${SLURM_PROCID:?run under srun}
export WORLD_SIZE=${SLURM_NTASKS:?run under srun}
export LOCAL_RANK=${SLURM_LOCALID:?run under srun}
tasks_here=${SLURM_STEP_TASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}
export LOCAL_WORLD_SIZE=${tasks_here%%[(,]*}
export GROUP_RANK=${SLURM_NODEID:-0} NODE_RANK=${SLURM_NODEID:-0}
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
export MASTER_PORT=${MASTER_PORT:-29500}
# several nodes: gloo and NCCL's bootstrap must use the interface that reaches the master (a wrong
# default, e.g. a docker bridge, hangs the first collective); set SOCKET_IFNAME to choose it yourself
if [ "${SLURM_JOB_NUM_NODES:-1}" != 1 ]; then
  ifname=${SOCKET_IFNAME:-}
  if [ -z "$ifname" ] && command -v ip >/dev/null 2>&1; then
    addr=$(getent ahostsv4 "$MASTER_ADDR" 2>/dev/null | awk 'NR == 1 {print $1}')
    ifname=$(ip -o route get "${addr:-$MASTER_ADDR}" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
  fi
  if [ -n "$ifname" ]; then
    export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$ifname}
    export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$ifname}
  fi
fi
echo "[task] host $(hostname) rank $RANK/$WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE" \
  "master $MASTER_ADDR:$MASTER_PORT${GLOO_SOCKET_IFNAME:+ interface $GLOO_SOCKET_IFNAME}"
exec "$@"
