# shellcheck shell=bash
# Shared by the sbatch scripts in slurm/ (sourced, not run): run directory, per-rank logs, launch
# with srun (one task per GPU, or torchrun per node), and the stop / requeue protocol.
#
# Stop / requeue protocol (docs/slurm.md):
#   * the scripts ask for `#SBATCH --signal=B:USR1@T`: T seconds before the time limit Slurm sends
#     SIGUSR1 to this batch shell only (not to the training processes and the helper processes they
#     spawn, which SIGUSR1 would kill);
#   * the trap below writes the stop file $RUN_DIR/stop_requested; the trainer polls it once per step
#     (all ranks agree through an all-reduce), finishes the current step, saves a checkpoint, writes
#     $RUN_DIR/preempted.json and exits with status 75;
#   * this shell then runs `scontrol requeue $SLURM_JOB_ID`: the job goes back to the queue (same job
#     id, same run directory) and, when it starts again, resumes from that checkpoint. The same happens
#     when SIGUSR1 reaches the training processes themselves (`--signal=USR1@T` without B:, or
#     `scancel --signal=USR1`): the ranks agree to stop after the same step.
#   * SIGTERM (preemption, `scontrol requeue`, `scancel`, the time limit itself) reaches every process of
#     the job: the trainer treats it like SIGUSR1 (it has KillWait / GraceTime seconds to save), and
#     this shell does not requeue: Slurm requeues a preempted or requeued job itself, and a cancelled
#     one stays cancelled.
#
# Environment read here (all optional):
#   NEMO_RESRL_ROOT   the repository (default: $SLURM_SUBMIT_DIR; submit from the repository root)
#   PYTHON            the interpreter (default: $NEMO_RESRL_ROOT/.venv/bin/python, else python3)
#   RUN_DIR           the run directory (default: $OUTPUT_ROOT/$SLURM_JOB_NAME-$SLURM_JOB_ID; a
#                     logging.run_dir=... override wins); reuse one to continue an earlier job's run
#   OUTPUT_ROOT       where run directories go (default: $SLURM_SUBMIT_DIR/runs)
#   LAUNCHER          srun (one task per GPU / process, the default) or torchrun (one task per node)
#   NPROC_PER_NODE    processes per node (default: $SLURM_NTASKS_PER_NODE, else 1)
#   MASTER_PORT       rendezvous port (default: 20000 + job id mod 20000)
#   DRY_RUN=1         print the launch command instead of running it

RESRL_EXIT_PREEMPTED=75 # the trainer's exit status after a stop request (EX_TEMPFAIL)

resrl_log() {
  printf '[%s %s] %s\n' "$(date -u +%FT%TZ)" "${SLURM_JOB_ID:-nojob}" "$*"
}

# resrl_setup OVERRIDE...: sets ROOT, PYTHON, RUN_DIR, LOG_DIR, STOP_FILE, PREEMPT_FILE, the rendezvous
# variables and OVERRIDES (the arguments, plus logging.run_dir=$RUN_DIR unless one of them sets it).
resrl_setup() {
  ROOT=${NEMO_RESRL_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
  if [ ! -f "$ROOT/nemo_resrl/__init__.py" ]; then
    resrl_log "error: $ROOT is not the nemo_resrl repository; submit from it or set NEMO_RESRL_ROOT" >&2
    exit 2
  fi
  if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
  fi
  local arg user_run_dir=""
  for arg in "$@"; do
    case $arg in
      logging.run_dir=* | +logging.run_dir=* | ++logging.run_dir=*) user_run_dir=${arg#*=} ;;
    esac
  done
  OVERRIDES=("$@")
  if [ -n "$user_run_dir" ]; then
    RUN_DIR=$user_run_dir
  else
    RUN_DIR=${RUN_DIR:-${OUTPUT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}/runs}/${SLURM_JOB_NAME:-resrl}-${SLURM_JOB_ID:-$$}}
    OVERRIDES+=("logging.run_dir=$RUN_DIR")
  fi
  case $RUN_DIR in /*) ;; *) RUN_DIR=${SLURM_SUBMIT_DIR:-$PWD}/$RUN_DIR ;; esac
  ATTEMPT=${SLURM_RESTART_COUNT:-0}
  LOG_DIR=$RUN_DIR/logs/attempt$ATTEMPT
  STOP_FILE=$RUN_DIR/stop_requested
  PREEMPT_FILE=$RUN_DIR/preempted.json
  mkdir -p "$LOG_DIR"
  export NEMO_RESRL_STOP_FILE=$STOP_FILE PYTHONUNBUFFERED=1

  # rendezvous from the Slurm allocation: the first node hosts the store
  NNODES=${SLURM_JOB_NUM_NODES:-1}
  NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
  if [ -z "${MASTER_ADDR:-}" ]; then
    if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null 2>&1; then
      MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    else
      MASTER_ADDR=127.0.0.1
    fi
  fi
  MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-$$} % 20000))}
  export MASTER_ADDR MASTER_PORT
}

resrl_on_signal() {
  RESRL_INTERRUPTED=1
  RESRL_STOP_SIGNAL=${RESRL_STOP_SIGNAL:-$1}
  resrl_log "batch script got SIG$1: the trainer checkpoints after its current step and stops"
  printf '%s\n' "SIG$1" >"$STOP_FILE" 2>/dev/null || true
}

# resrl_launch_command CMD...: the srun command line for CMD (a python -m ... invocation) in the array
# LAUNCH, per LAUNCHER.
resrl_launch_command() {
  local world=$((NNODES * NPROC_PER_NODE)) cpus=()
  case ${LAUNCHER:-srun} in
    srun)
      # one task per process; slurm/task.sh maps SLURM_PROCID etc. to RANK / LOCAL_RANK / WORLD_SIZE.
      # (srun >= 22.05 does not take --cpus-per-task from the allocation by itself)
      if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then cpus=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
      # with GPUs, every task sees all of its node's GPUs and picks LOCAL_RANK's (torch.cuda.set_device):
      # srun's default binding would give each task one GPU, on which LOCAL_RANK > 0 does not exist
      if [ "${SLURM_GPUS_ON_NODE:-0}" != 0 ]; then cpus+=(--gpu-bind="${RESRL_GPU_BIND:-none}"); fi
      LAUNCH=(srun --nodes="$NNODES" --ntasks="$world" --ntasks-per-node="$NPROC_PER_NODE" "${cpus[@]}"
        --kill-on-bad-exit=1 --output="$LOG_DIR/rank%t.log"
        bash "$ROOT/slurm/task.sh" "$PYTHON" "$@")
      ;;
    torchrun)
      # one torchrun per node, with the CPUs of all its processes. torchrun forwards no SIGUSR1 by
      # default; the stop file makes that unnecessary.
      if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
        cpus=(--cpus-per-task="$((SLURM_CPUS_PER_TASK * NPROC_PER_NODE))")
      fi
      LAUNCH=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 "${cpus[@]}"
        --kill-on-bad-exit=1 --output="$LOG_DIR/node%n.log"
        "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE"
        --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="${SLURM_JOB_ID:-0}"
        --log-dir="$LOG_DIR/torchrun" --redirects=3 --tee=3 "$@")
      ;;
    *)
      resrl_log "error: LAUNCHER must be srun or torchrun, not ${LAUNCHER}" >&2
      exit 2
      ;;
  esac
}

# resrl_run CMD...: launch CMD on every rank, wait (passing SIGUSR1 / SIGTERM on as a stop request),
# requeue the job when the trainer stopped for SIGUSR1; exits with the job's status.
resrl_run() {
  resrl_launch_command "$@"
  resrl_log "run dir $RUN_DIR (attempt $ATTEMPT; per-rank logs in $LOG_DIR)"
  resrl_log "launch: ${LAUNCH[*]}"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    exit 0
  fi
  rm -f "$STOP_FILE" "$PREEMPT_FILE"
  RESRL_STOP_SIGNAL=""
  trap 'resrl_on_signal USR1' USR1
  trap 'resrl_on_signal TERM' TERM
  "${LAUNCH[@]}" &
  local pid=$! rc
  while :; do
    RESRL_INTERRUPTED=0
    wait "$pid"
    rc=$?
    # a trapped signal interrupts `wait` (status > 128) while the job step goes on: wait again
    if [ "$RESRL_INTERRUPTED" = 1 ] && [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    break
  done
  trap '' USR1 # a late time-limit signal must not kill this shell now
  trap - TERM
  if [ -f "$PREEMPT_FILE" ]; then
    local stopped
    stopped=$(cat "$PREEMPT_FILE")
    resrl_log "trainer stopped early: $stopped"
    # SIGTERM (to this shell or the trainer) means Slurm is ending the job: it requeues a preempted or
    # requeued job itself, and a cancelled one must stay cancelled. Any other stop (SIGUSR1 to this
    # shell or to the trainer, the stop file) is ours to requeue.
    case "$RESRL_STOP_SIGNAL $stopped" in
      TERM* | *'"SIGTERM"'*) ;;
      *)
        # logged BEFORE the call: requeueing a running job ends this shell, possibly before a later line
        [ -n "${SLURM_JOB_ID:-}" ] && resrl_log "requeueing job $SLURM_JOB_ID: the next attempt resumes from the checkpoint"
        if [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"; then
          exit 0
        fi
        resrl_log "error: could not requeue; resubmit with RUN_DIR=$RUN_DIR to resume" >&2
        ;;
    esac
    exit "$RESRL_EXIT_PREEMPTED"
  fi
  resrl_log "training exited with status $rc"
  exit "$rc"
}
