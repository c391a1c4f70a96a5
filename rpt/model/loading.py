"""Load a model for inference or as the start of a training stage from a stage's latest checkpoint."""

from __future__ import annotations

from pathlib import Path

from rpt import checkpoint
from rpt.errors import MissingInput
from rpt.model.build import build_model
from rpt.model.footprint import check_fits, model_vocab
from rpt.model.hf_config import check_imported_shape


def checkpoint_dir(rd, source: str) -> Path:
    """``source`` is a stage name (its latest checkpoint) or a checkpoint directory path."""
    if Path(source).is_dir() and (Path(source) / "state.pt").exists():
        return Path(source)
    step_dir = checkpoint.latest_step_dir(rd.checkpoints(source))
    if step_dir is None:
        raise MissingInput(f"no checkpoint for {source!r} under {rd.checkpoints(source)}: run the stage that makes it, "
                           f"or start from another (a stage name or a checkpoint directory)")
    return step_dir


def load_eval_model(model_cfg, rt, rd, source: str, vocab_size: int):
    """The model of ``model_cfg`` with ``source``'s latest weights, in eval mode. In a run with an ``hf_import``,
    a ``model_cfg`` of another shape is refused before building (naming the fields)."""
    vocab = model_vocab(model_cfg, vocab_size)
    check_imported_shape(model_cfg, rd, vocab)
    check_fits(model_cfg, vocab, rt, training=False)
    model = build_model(model_cfg, vocab, rt.dtype)
    checkpoint.load_model_weights(checkpoint_dir(rd, source), model)
    model.eval()
    return model
