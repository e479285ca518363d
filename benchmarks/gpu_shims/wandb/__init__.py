"""Stand-in for wandb, put on sys.path by benchmarks/gpu_check.py only where wandb is absent.

sae-lens imports wandb at module level but calls it only when logging to wandb is on, which
the GPU check never turns on; the real wheel (about 20 MB) would not fit the files a lent GPU
machine is sent. Any use of it fails loudly."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(f"wandb.{name}: this is benchmarks/gpu_shims' stand-in for wandb, "
                       "which is not installed; logging to wandb is not available here")
