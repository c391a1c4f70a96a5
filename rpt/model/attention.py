"""Core attention for megatron-core's layer spec, computed with ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the full score matrix through ``baddbmm`` and a
masked softmax; on CPU SDPA is ~40% faster, and on GPU it dispatches to flash / memory-efficient kernels without
Transformer Engine. We subclass the stock module so its constructor (head counts per TP rank, softmax scale,
sharded state dict) stays megatron's, and replace only ``forward``.

Masking rules: training and prefill (``sq == sk``) use ``is_causal``; a decode step against a KV cache
(``sq < sk``) must *not* use ``is_causal`` because SDPA aligns its causal mask top-left, so we build the
bottom-right-aligned mask explicitly. An explicit boolean ``attention_mask`` (True = masked, megatron's
convention) overrides both. A ``SharedPrefixMask`` (``rpt.model.shared_prefix``: G responses over one copy of
their prompt) brings its own attention rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention

from rpt.model.shared_prefix import SharedPrefixMask


class SDPAttention(DotProductAttention):
    """Megatron ``DotProductAttention`` with an SDPA forward. Layout: ``[s, b, heads, dim]`` in, ``[s, b, h]`` out."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **kwargs):
        assert packed_seq_params is None and attention_bias is None, "SDPAttention: unsupported arguments"
        sq, b, n_heads, head_dim = query.shape
        sk = key.shape[0]
        groups = n_heads // key.shape[2]
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        dropout = self.attention_dropout.p if self.training else 0.0
        if isinstance(attention_mask, SharedPrefixMask):
            out = attention_mask.attend(q, k, v, self.softmax_scale, dropout)
            return out.permute(2, 0, 1, 3).reshape(sq, b, n_heads * head_dim)
        mask, is_causal = None, False
        if attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)
        elif sq == sk:
            is_causal = True
        elif sq > 1:
            # query rows are the last sq positions of the sk keys: bottom-right causal alignment
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        # grouped-query heads are shared inside the kernel (enable_gqa) instead of materialised copies of K and V
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             dropout_p=dropout, scale=self.softmax_scale, enable_gqa=groups > 1)
        return out.permute(2, 0, 1, 3).reshape(sq, b, n_heads * head_dim)
