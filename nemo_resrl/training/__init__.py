"""The training layer: the RL step on narrow interfaces, and the run around it.

interfaces.py    PolicyInterface, GenerationInterface, DataParallelInterface (what the trainer calls)
trainer.py       Trainer: one RL step (rollout, rewards, advantages, log-prob pass + ResRL, updates,
                 refit) and greedy evaluation
step_metrics.py  a step's metrics with how each reduces over data-parallel ranks
phases.py        a phase context manager: timing and the progress display
data_parallel.py SingleProcess / TorchDataParallel
data_order.py    which prompts each step trains on (resume-safe)
loop.py          run_training: resume, steps, eval, checkpoints, stop requests
stop.py          the stop protocol (signals, stop file, exit 75)
metrics_log.py   metrics.jsonl, TensorBoard, W&B, the per-step table, the progress bar
"""
