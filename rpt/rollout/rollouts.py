"""What a ``generate`` call returns, whichever engine produced it (``rpt.rollout.engine``'s decoders or
``rpt.rollout.vllm_engine``): the tokens, where the responses are, the sampler's log-probs, and the work done.
Kept apart from the engines so each imports it without importing the other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeStats:
    """How a ``generate`` call spent its work (logged at debug level; tests read it)."""

    chunks: int = 0  # decoder batches run one after another
    peak_rows: int = 0  # most rows in one decoder batch
    peak_kv_tokens: int = 0  # largest KV cache allocated: rows x columns
    prefill_rows: int = 0  # prompt rows the decoders computed (a run of identical prompts counts once: lean)
    row_steps: int = 0  # sum over decode steps of the rows in the batch (prefill excluded)


@dataclass
class Rollouts:
    tokens: torch.Tensor  # [N, T] prompt + response, right-padded with pad_id
    prompt_lens: torch.Tensor  # [N]
    response_mask: torch.Tensor  # [N, T] True where the token was generated
    sample_logprobs: torch.Tensor  # [N, T] log-prob of generated tokens under the sampler (0 elsewhere)
    truncated: torch.Tensor  # [N] bool: ended by the max_new_tokens cap (no end-of-sequence, no closed answer)
    stats: DecodeStats = field(default_factory=DecodeStats, compare=False)  # work done by the producing call

    @property
    def response_lens(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def response_ids(self, i: int) -> list[int]:
        return self.tokens[i][self.response_mask[i]].tolist()

    def select(self, rows: torch.Tensor | slice) -> Rollouts:
        """The rollouts of ``rows`` (indices, a bool mask or a slice)."""
        return Rollouts(self.tokens[rows], self.prompt_lens[rows], self.response_mask[rows],
                        self.sample_logprobs[rows], self.truncated[rows])

    @staticmethod
    def concat(parts: list[Rollouts], pad_id: int) -> Rollouts:
        """Rows of every part, right-padded to the widest (no parts: an empty batch)."""
        if not parts:
            return Rollouts(torch.full((0, 1), pad_id, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool))
        width = max(p.tokens.shape[1] for p in parts)

        def cat(name, value):
            return torch.cat([torch.nn.functional.pad(getattr(p, name), (0, width - p.tokens.shape[1]), value=value)
                              for p in parts])

        return Rollouts(cat("tokens", pad_id), torch.cat([p.prompt_lens for p in parts]),
                        cat("response_mask", False), cat("sample_logprobs", 0.0),
                        torch.cat([p.truncated for p in parts]))
