"""Who wrote a model's weights last: a counter on the model, bumped by the events that write them.

The colocated vLLM engine must resend the weights after every write. Parameter version counters (``p._version``)
miss writes through ``.data`` and fused kernels: megatron-core's bf16 optimizer copies its fp32 main weights into
the model exactly that way, so an engine keyed on them kept sampling from stale weights. The trainer knows when it
wrote (an optimizer step, a checkpoint load), so it says so here, and the engine keys on this counter (beside the
version counters, which still catch a plain in-place write elsewhere).
"""

from __future__ import annotations

from rpt.model.forward import unwrap

_ATTR = "_rpt_weight_writes"


def note_weights_written(model) -> None:
    """Record that ``model``'s weights (a ``GPTModel`` or a wrapper around one) were just written."""
    inner = unwrap(model)
    setattr(inner, _ATTR, getattr(inner, _ATTR, 0) + 1)


def weight_writes(model) -> int:
    """How many writes ``note_weights_written`` recorded for ``model``."""
    return getattr(unwrap(model), _ATTR, 0)
