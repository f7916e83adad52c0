"""A quiet start: the library warnings known to be harmless here are filtered, each by its exact message.

Installed by `errors.run_cli` before any script imports torch. Anything not listed still prints.
"""
from __future__ import annotations

import logging
import re

# torch 2.13 deprecates registering Enums as pytree constants; torchao 0.18 still does it at import. No effect on us.
_PYTREE_ENUM = ("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type. "
                "Calling register_constant() on Enum subclasses is deprecated and will be an error in a future "
                "release.")
# bitsandbytes' CPU backend tries an optional kernel that the `kernels` package would download from the Hub at run
# time; without it bitsandbytes uses its own CPU kernel (the one every CPU run here has used).
_BNB_CPU_KERNEL = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                   "`pip install kernels` and the kernels >= 0.11.1")
# torchao tries to load its CUDA kernels (mxfp8, cutlass) at import; a CPU-only torch cannot load them, and nothing
# here uses them. Filtered only when torch has no CUDA: on a GPU the message stays.
_TORCHAO_SO = re.compile(r"Failed to load \S*torchao[/\\]_C\S*\.so: Could not load this library: ")


# transformers' continuous batching, on a request the project cancelled once its closing tag was complete
# (generation._continuous): the answer's next token was usually its end of turn, so the request had already finished
# and freed its cache blocks when the manager read the cancellation; `clear_cancelled_requests` frees again without
# checking, finds nothing and logs this. Nothing is freed twice (the block table no longer holds the request), so
# the line is filtered, but only for requests generation.py cancelled: any other such line still prints.
_CB_FREE = re.compile(r"CacheAllocator \d+ attempted to free blocks for non-existent request_id: (\S+)$")
# A tokenizer's model_max_length is the run's MAX_SEQ_LENGTH where Unsloth saved it, not the model's context, and
# the project says itself what happens to longer inputs: preflight.check_lengths (training, cut and counted),
# preference.fit_pairs (DPO, cut and counted), preflight.prompt_lengths_line (evaluation: answered whole).
_TOO_LONG = "Token indices sequence length is longer than the specified maximum sequence length for this model"


CANCELLED_BY_US: set[str] = set()  # request ids answers/generation.py cancelled at their closing tag (it fills this)


def _cancelled_by_us(record) -> bool:
    found = isinstance(record.msg, str) and _CB_FREE.match(record.msg)
    return bool(found) and found.group(1) in CANCELLED_BY_US


def _cpu_only_torch() -> bool:
    import torch  # already imported by whoever logged
    return torch.version.cuda is None


KNOWN_HARMLESS = {
    "torch.utils._pytree": lambda record: record.msg == _PYTREE_ENUM,
    "bitsandbytes.backends.cpu.ops": lambda record: record.msg == _BNB_CPU_KERNEL,
    "torchao": lambda record: isinstance(record.msg, str) and bool(_TORCHAO_SO.match(record.msg))
    and _cpu_only_torch(),
    "ContinuousBatchingLogger": _cancelled_by_us,
    "transformers.tokenization_utils_base": lambda record: isinstance(record.msg, str)
    and record.msg.startswith(_TOO_LONG),
}


class _DropKnown(logging.Filter):
    def __init__(self, is_harmless) -> None:
        super().__init__()
        self.is_harmless = is_harmless

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.is_harmless(record)


def install() -> None:
    """Attach the filters to the loggers that emit them (before those libraries are imported; idempotent)."""
    for name, is_harmless in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(is_harmless))
