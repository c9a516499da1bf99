"""gptkit: train, evaluate, sample from and inspect your own small GPT.

    from gptkit import load_run
    run = load_run("runs/shakespeare-char")
    ids = run.tokenizer.encode("ROMEO:")
"""

from gptkit.config import RunConfig, load_config
from gptkit.errors import GptkitError

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GptkitError",
    "RunConfig",
    "Tokenizer",
    "__version__",
    "load_config",
    "load_run",
    "train",
]


def __getattr__(name: str) -> object:
    # torch-heavy names load on first use so `gptkit --help` stays fast
    if name == "GPT":
        from gptkit.model import GPT

        return GPT
    if name == "Tokenizer":
        from gptkit.tokenizers import Tokenizer

        return Tokenizer
    if name == "load_run":
        from gptkit.run import load_run

        return load_run
    if name == "train":  # the package, which is callable: see gptkit/train/__init__.py
        import gptkit.train

        return gptkit.train
    raise AttributeError(f"module 'gptkit' has no attribute {name!r}")
