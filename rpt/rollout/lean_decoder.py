"""A lean incremental forward of our megatron ``GPTModel`` for rollouts: the same weights and the same math,
without megatron's per-module machinery.

Why our own: a decode step of a small model is host-bound. megatron-core's inference path runs every layer
through its generic ``TransformerLayer`` / ``Attention`` / tensor-parallel linear wrappers and a KV-cache context
built for many features, which costs more host time per token than the arithmetic (on CPU it decoded slower than
HF ``generate``). This module reads the model's own parameters (no copies, so it always sees the current weights)
and runs each layer as a handful of torch calls: RMSNorm, fused QKV projection split by query group, RoPE,
a preallocated KV cache written in place, SDPA with grouped-query heads, output projection, SwiGLU MLP.
The prefill runs once per run of identical rows (a GRPO group's G copies of one prompt), so a group's prompt
costs one forward instead of G, and its keys and values are kept once for the group: each row's cache holds only
the tokens it generates, and a decode step reads the prompt once per group (``rpt.rollout.shared_prompt_kv``).
Rows with prompts of their own keep everything in their own cache. ``keep`` compacts the caches to the rows still
decoding (``rpt.rollout.engine`` drops finished rows), so later steps compute only those rows.

Scope: the architecture ``rpt.model.build`` makes (RMSNorm, SwiGLU, RoPE without interleaving, GQA, optional
QKV bias, tied or untied output), tensor- and pipeline-parallel size 1. ``supports(model)`` says whether a model
qualifies; ``rpt.rollout.engine`` falls back to megatron's ``StaticInferenceContext`` path otherwise. The logits
equal a plain megatron forward to float32 rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rpt.rollout.shared_prompt_kv import RowGroups, shared_prompt_attention


def supports(model) -> bool:
    """True when ``model`` is a single-rank (TP = PP = 1) GPTModel of the architecture rpt builds."""
    from megatron.core import parallel_state

    config = model.config
    return (parallel_state.get_tensor_model_parallel_world_size() == 1
            and parallel_state.get_pipeline_model_parallel_world_size() == 1
            and config.normalization == "RMSNorm" and config.gated_linear_unit and not config.add_bias_linear
            and getattr(model, "position_embedding_type", "rope") == "rope"
            and not getattr(model.rotary_pos_emb, "rotary_interleaved", False)
            and config.qk_layernorm is False)


class LeanDecoder:
    """Prefill every row's prompt (ragged lengths allowed: ``prefill``), then one token per sequence per step,
    against a preallocated KV cache of ``max_len``.

    Ragged prompts are stored left-padded: row i's cache starts at column ``offsets[i]``, its token at column c
    has rotary position ``c - offsets[i]``, and padded columns are masked out of attention. The positions a token
    sees are therefore exactly those of a plain causal forward over its own row."""

    def __init__(self, model, batch: int, max_len: int):
        self.model = model
        config = model.config
        self.heads, self.groups = config.num_attention_heads, config.num_query_groups
        self.head_dim = config.kv_channels
        self.scale = model.decoder.layers[0].self_attention.core_attention.softmax_scale
        param = model.embedding.word_embeddings.weight
        self.batch, self.max_len, self.dtype, self.device = batch, max_len, param.dtype, param.device
        self.k_cache: list[torch.Tensor] = []  # per layer [batch, kv_heads, columns, d]; allocated by the prefill
        self.v_cache: list[torch.Tensor] = []
        positions = torch.arange(max_len, device=param.device, dtype=torch.float32)
        freqs = torch.outer(positions, model.rotary_pos_emb.inv_freq.float().to(param.device))
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_len, head_dim]
        # RoPE as x·cos + roll(x, d/2)·sin_signed: rotate-half's sign is folded into the sine's first half
        # (the same products, bit for bit, in two ops fewer per call: a decode step is host-bound)
        sin = emb.sin()
        sin[:, :sin.shape[1] // 2].neg_()
        self.cos, self.sin_signed = emb.cos().to(param.dtype), sin.to(param.dtype)
        self.length = 0  # columns filled (prompt and generated)
        self.rows = batch  # rows decoding: the first ``rows`` rows of the cache
        self.offsets = None  # [rows] left padding of each row's cache; None = no row is padded
        self.prefilled_rows = 0  # distinct prompt rows the prefill computed
        self.prompt_k: list[torch.Tensor] = []  # per layer [groups, kv_heads, P, d]: a shared prompt's keys, once
        self.prompt_v: list[torch.Tensor] = []
        self.row_groups: RowGroups | None = None  # set when prompts are shared: own caches then start after them
        self.prompt_len = 0  # columns held in prompt_k (0: every column is in the rows' own caches)

    def _allocate(self, columns: int) -> None:
        shape = (self.batch, self.groups, columns, self.head_dim)
        layers = len(self.model.decoder.layers)
        self.k_cache = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]
        self.v_cache = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(layers)]

    @torch.inference_mode()
    def keep(self, rows: torch.Tensor) -> None:
        """Compact the cache to ``rows`` (indices into the current batch, ascending): they become rows
        0..len(rows)-1, and later steps feed only them."""
        for cache in (*self.k_cache, *self.v_cache):
            cache[:len(rows)] = cache[rows]
        self.rows = len(rows)
        if self.offsets is not None:
            self.offsets = self.offsets[rows]
        if self.row_groups is not None:
            self.row_groups = self.row_groups.keep(rows)

    def _rope_and_mask(self, offsets, s: int, device):
        """cos/signed sin for this call's columns of rows with left padding ``offsets``, shaped to broadcast over
        ``[b, s, groups, heads per group, d]``, and the boolean attention mask (None: plain causal / full)."""
        start, end = self.length, self.length + s
        if offsets is None:
            return self.cos[start:end, None, None], self.sin_signed[start:end, None, None], None
        cols = torch.arange(start, end, device=device)
        pos = (cols.view(1, -1) - offsets.view(-1, 1)).clamp(min=0)  # [b, s]
        keys = torch.arange(end, device=device)
        mask = keys.view(1, 1, -1) >= offsets.view(-1, 1, 1)  # [b, 1, end]: not left padding
        if s > 1:  # prefill: causal as well; a padding query keeps itself so its softmax has a key
            mask = (mask & (keys.view(1, -1) <= cols.view(-1, 1))) | torch.eye(s, end, dtype=torch.bool,
                                                                                device=device)
        return self.cos[pos][:, :, None, None], self.sin_signed[pos][:, :, None, None], mask.unsqueeze(1)

    def _attention(self, layer, index: int, x: torch.Tensor, cos, sin, mask, copies) -> torch.Tensor:
        """One layer's attention; ``copies`` (a prefill of unique rows) says how many cache rows each row fills."""
        b, s, _ = x.shape
        attn = layer.self_attention
        qkv = F.linear(x, attn.linear_qkv.weight, attn.linear_qkv.bias)
        per = self.heads // self.groups
        qkv = qkv.view(b, s, self.groups, per + 2, self.head_dim)
        qk = qkv[:, :, :, :per + 1]  # every query head and its group's key head: rotated together
        qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
        q = qk[:, :, :, :per].reshape(b, s, self.heads, self.head_dim).transpose(1, 2)  # [b, h, s, d]
        k = qk[:, :, :, per].transpose(1, 2)  # [b, g, s, d]
        v = qkv[:, :, :, per + 1].transpose(1, 2)
        start, end = self.length, self.length + s
        k_cache, v_cache = self.k_cache[index][:self.rows], self.v_cache[index][:self.rows]
        own = slice(start - self.prompt_len, end - self.prompt_len)  # this call's columns in the rows' own caches
        if copies is not None and self.row_groups is not None:  # prefill of shared prompts: kept once per group
            self.prompt_k.append(k.contiguous())
            self.prompt_v.append(v.contiguous())
            keys, values = k, v
        elif copies is not None:  # prefill of unique rows: attend within them, fill every copy's cache
            k_cache[:, :, own] = k.repeat_interleave(copies, 0)
            v_cache[:, :, own] = v.repeat_interleave(copies, 0)
            keys, values = k, v
        else:
            k_cache[:, :, own] = k
            v_cache[:, :, own] = v
            keys, values = k_cache[:, :, :own.stop], v_cache[:, :, :own.stop]
        if s == 1 and self.row_groups is not None:
            out = shared_prompt_attention(q, self.prompt_k[index], self.prompt_v[index], keys, values,
                                          self.row_groups, self.scale, mask)
        else:  # a prefill attends causally within itself; a single new token attends to everything cached
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 is_causal=mask is None and s > 1 and start == 0, scale=self.scale,
                                                 enable_gqa=self.groups != self.heads)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        return F.linear(out, attn.linear_proj.weight)

    def _mlp(self, layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, layer.mlp.linear_fc1.weight).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, layer.mlp.linear_fc2.weight)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every prompt whole: logits ``[b, vocab]`` after the last token of each, and the column each row writes
        next (its length). ``tokens`` ``[b, max(lens)]`` right-padded."""
        width = tokens.shape[1]
        self.prefilled_rows = tokens.shape[0]  # a multi-token forward counts its distinct rows instead
        offsets = width - lens.to(tokens.device)
        if bool((offsets == 0).all()):
            return self.forward(tokens), lens.clone()
        cols = torch.arange(width, device=tokens.device)
        self.offsets = offsets
        return self.forward(tokens.gather(1, (cols.view(1, -1) - offsets.view(-1, 1)).clamp(min=0))), lens.clone()

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, vocab]`` (float32) after the last of ``tokens`` ``[b, s]``, which follow the cache."""
        if tokens.shape[1] > 1 and self.length > 0:
            raise ValueError("LeanDecoder: multi-token steps are only supported as the first (prefill) call")
        if tokens.shape[0] != self.rows:
            raise ValueError(f"LeanDecoder: {self.rows} rows are decoding, got a step of {tokens.shape[0]}")
        model = self.model
        offsets, copies = self.offsets, None
        if tokens.shape[1] > 1:  # prefill: each run of identical rows is computed once
            first, copies = _unique_runs(tokens, offsets)
            tokens = tokens[first]
            self.prefilled_rows = len(first)
            offsets = None if offsets is None else offsets[first]
            if bool((copies > 1).any()):  # shared prompts: their keys and values are kept once per group
                group = torch.repeat_interleave(torch.arange(len(first), device=tokens.device), copies)
                self.row_groups, self.prompt_len = RowGroups.of(group, len(first)), tokens.shape[1]
        if not self.k_cache:
            self._allocate(self.max_len - self.prompt_len)
        cos, sin, mask = self._rope_and_mask(offsets, tokens.shape[1], tokens.device)
        x = F.embedding(tokens, model.embedding.word_embeddings.weight)
        for index, layer in enumerate(model.decoder.layers):
            x = x + self._attention(layer, index, layer.input_layernorm(x), cos, sin, mask, copies)
            x = x + self._mlp(layer, layer.pre_mlp_layernorm(x))
        self.length += tokens.shape[1]
        x = model.decoder.final_layernorm(x[:, -1])
        out_weight = (model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights
                      else model.output_layer.weight)
        logits = F.linear(x, out_weight).float()
        return logits if copies is None else logits.repeat_interleave(copies, 0)


def _unique_runs(tokens: torch.Tensor, offsets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first row of every run of identical consecutive rows (same tokens and same left padding),
    and each run's length."""
    starts = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    starts[1:] = (tokens[1:] != tokens[:-1]).any(1)
    if offsets is not None:
        starts[1:] |= offsets[1:] != offsets[:-1]
    first = starts.nonzero().squeeze(-1)
    ends = torch.cat([first[1:], first.new_tensor([tokens.shape[0]])])
    return first, ends - first
