"""Shared-prompt forward for GRPO groups: the G responses of a group are scored over one copy of their prompt.

A GRPO group is G responses to the same prompt. A plain trainer forward runs the prompt G times; for RPT, where
the prompt is a long document prefix and the answer short, that repetition is most of the update's compute. Here
each group becomes one row ``[prompt | response_1 | ... | response_G]`` (prompt padded to the micro-batch's longest
prompt ``P``, each response to its longest response ``R``) and the model runs once over it:

- attention (``SharedPrefixMask.attend``, called by ``rpt.model.attention.SDPAttention``): prompt tokens attend
  causally among themselves; the tokens of response i attend to the group's real prompt tokens and causally to
  response i, never to another response. Gradients from all G responses meet in the one prompt copy, so the update
  is the same as G separate rows (to float rounding);
- rotary positions: response i's t-th token sits at position ``len(prompt) + t``, as in the plain layout, so the
  per-token positions are fed to megatron's RoPE through a forward hook on ``GPTModel.rotary_pos_emb`` (megatron
  computes RoPE from the sequence length alone for ``bshd`` inputs; its rope code broadcasts ``[s, b, 1, d]``).

megatron-core's packed-sequence path (THD, ``PackedSeqParams``) cannot express "many sequences share one prefix"
and needs Transformer Engine, hence this module. The log-probs and entropies come back in the plain
``[n, T-1]`` layout (aligned with ``tokens[:, 1:]``, zero outside the responses) so nothing downstream changes;
the output layer runs only on the hidden states that predict a response token, a chunk of tokens at a time
(``rpt.model.forward.token_logprobs``: the prompt's and the padding's logits are never computed, and no more than
one chunk's logits exist at once).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rpt.model.forward import LOGITS_CHUNK_TOKENS, final_hidden_states, token_logprobs, unwrap


@dataclass
class SharedPrefixMask:
    """Passed to the model as ``attention_mask``; megatron hands it unchanged to the core attention."""

    prompt_cols: int  # P: columns holding the (padded) prompt
    group_size: int  # G: responses per row
    response_cols: int  # R: columns per (padded) response
    response_keys: torch.Tensor  # [rows * G or 1, 1, R, P + R] bool, True = may attend

    def attend(self, q, k, v, scale: float, dropout: float) -> torch.Tensor:
        """SDPA over the shared layout: ``q`` ``[b, h, S, d]``, ``k``/``v`` ``[b, hk, S, d]``; out ``[b, h, S, d]``."""
        P, G, R = self.prompt_cols, self.group_size, self.response_cols
        gqa = q.shape[1] != k.shape[1]
        prompt_out = F.scaled_dot_product_attention(q[:, :, :P], k[:, :, :P], v[:, :, :P], is_causal=True,
                                                    dropout_p=dropout, scale=scale, enable_gqa=gqa)

        def per_response(x):  # [b, h, P + G*R, d] -> [b*G, h, R, d]
            b, h, _, d = x.shape
            return x[:, :, P:].reshape(b, h, G, R, d).transpose(1, 2).reshape(b * G, h, R, d)

        def with_prompt(x):  # the group's prompt keys/values in front of each response's own
            b, h, _, d = x.shape
            prompt = x[:, :, :P].unsqueeze(1).expand(b, G, h, P, d).reshape(b * G, h, P, d)
            return torch.cat([prompt, per_response(x)], dim=2)

        out = F.scaled_dot_product_attention(per_response(q), with_prompt(k), with_prompt(v),
                                             attn_mask=self.response_keys, dropout_p=dropout, scale=scale,
                                             enable_gqa=gqa)
        b, h, _, d = q.shape
        out = out.reshape(b, G, h, R, d).transpose(1, 2).reshape(b, h, G * R, d)
        return torch.cat([prompt_out, out], dim=2)


@dataclass
class GroupLayout:
    """Where every token of the plain ``[n, T]`` batch lives in the shared ``[n / G, P + G*R]`` rows."""

    tokens: torch.Tensor  # [rows, P + G*R]
    positions: torch.Tensor  # [rows, P + G*R] rotary positions
    mask: SharedPrefixMask
    source_cols: torch.Tensor  # [n, R] shared column whose logits predict response token t of sequence i
    targets: torch.Tensor  # [n, R] response token t of sequence i (pad beyond the response)
    valid: torch.Tensor  # [n, R] t < response length
    plain_index: torch.Tensor  # [n, R] index into the plain [T-1] axis (prompt_len - 1 + t)


def group_layout(tokens: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor,
                 group_size: int, pad_id: int = 0) -> GroupLayout | None:
    """The shared layout of ``tokens`` (``[n, T]``: prompt, then response, then right padding), or None when the
    rows are not groups of ``group_size`` sharing one prompt (then use the plain forward)."""
    n, T = tokens.shape
    G = group_size
    if G < 2 or n % G:
        return None
    device = tokens.device
    lens = prompt_lens.to(device).view(-1, G)
    if not bool((lens == lens[:, :1]).all()):
        return None
    P = int(lens.max())
    cols = torch.arange(T, device=device)
    in_prompt = cols.unsqueeze(0) < prompt_lens.to(device).view(-1, 1)
    first = tokens.view(-1, G, T)[:, :1]
    if not bool(((tokens.view(-1, G, T) == first) | ~in_prompt.view(-1, G, T)).all()):
        return None
    response_lens = response_lens.to(device)
    R = max(int(response_lens.max()), 1)
    rows, S = n // G, P + G * R
    plen = lens[:, 0]  # [rows]
    shared = torch.full((rows, S), pad_id, dtype=tokens.dtype, device=device)
    shared[:, :P] = torch.where(cols[:P] < plen.view(-1, 1), tokens.view(rows, G, T)[:, 0, :P], pad_id)
    t = torch.arange(R, device=device)
    plain_cols = (prompt_lens.to(device).view(-1, 1) + t).clamp(max=T - 1)  # [n, R]
    valid = t.unsqueeze(0) < response_lens.view(-1, 1)
    targets = torch.where(valid, tokens.gather(1, plain_cols), pad_id)
    shared[:, P:] = targets.view(rows, G * R)
    positions = cols.new_zeros(rows, S)
    positions[:, :P] = torch.arange(P, device=device)
    positions[:, P:] = (plen.view(-1, 1, 1) + t.view(1, 1, R)).expand(rows, G, R).reshape(rows, G * R)
    # response token t is predicted from the last prompt token (t = 0) or from response token t-1
    group_of = torch.arange(n, device=device) // G
    member = torch.arange(n, device=device) % G
    source = torch.where(t == 0, plen[group_of].view(-1, 1) - 1, P + member.view(-1, 1) * R + t - 1)
    keys = torch.arange(P + R, device=device)
    prompt_keys = (keys < P) & (keys.view(1, -1) < plen.view(-1, 1))  # [rows, P + R]
    own_keys = (keys >= P) & (keys.view(1, -1) - P <= t.view(-1, 1))  # [R, P + R]
    if bool((plen == P).all()):  # one prompt length (e.g. contexts cut to a fixed budget): one mask for all rows
        response_keys = (prompt_keys[:1] | own_keys).view(1, 1, R, P + R)
    else:
        response_keys = prompt_keys.repeat_interleave(G, 0).view(n, 1, 1, P + R) | own_keys.view(1, 1, R, P + R)
    return GroupLayout(shared, positions, SharedPrefixMask(P, G, R, response_keys), source, targets, valid,
                       prompt_lens.to(device).view(-1, 1) - 1 + t)


@contextlib.contextmanager
def rotary_positions(gpt_model, positions: torch.Tensor):
    """Make ``gpt_model``'s RoPE use per-token ``positions`` (``[b, s]``) for the forwards inside the block."""
    rope = gpt_model.rotary_pos_emb
    table = rope(int(positions.max()) + 1)  # [L, 1, 1, d]
    freqs = table[positions.t()].squeeze(2)  # [s, b, 1, d]: megatron's rope broadcasts over heads
    handle = rope.register_forward_hook(lambda module, args, output: freqs)
    try:
        yield
    finally:
        handle.remove()


def shared_prompt_logprobs(model, layout: GroupLayout, n: int, width: int, temperature: float,
                           chunk_tokens: int = LOGITS_CHUNK_TOKENS):
    """Log-probs and full-distribution entropies of every response token, in the plain ``[n, width]`` layout
    (``width = T - 1``; zero outside the responses); the output layer runs ``chunk_tokens`` tokens at a time."""
    gpt = unwrap(model)
    with rotary_positions(gpt, layout.positions):
        hidden = final_hidden_states(model, layout.tokens, layout.positions, layout.mask)  # [S, rows, h]
    seq, tok = layout.valid.nonzero(as_tuple=True)
    row = seq // layout.mask.group_size
    logp, entropy = token_logprobs(gpt, hidden[layout.source_cols[seq, tok], row], layout.targets[seq, tok],
                                   temperature, chunk_tokens)  # [valid tokens] each
    where = (seq, layout.plain_index[seq, tok])

    def plain(values):  # out-of-place index_put keeps the autograd graph
        return torch.zeros(n, width, dtype=torch.float32, device=values.device).index_put(where, values)

    return plain(logp), plain(entropy)
