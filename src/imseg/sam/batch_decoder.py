"""SAM's mask decoder for one image embedding and many prompts (``SamPredictor`` and "segment everything").

:class:`~imseg.sam.mask_decoder.MaskDecoder` follows the official code: every prompt carries its own
copy of the 64x64x256 image tokens, and each attention layer projects those 4096 tokens again
(to 128 channels) for each prompt. :class:`PromptBatchDecoder` computes the same function with the
products re-associated, so the image tokens are only ever multiplied by a prompt's few tokens:

* token -> image attention: ``softmax((q W_k) keys^T) keys W_v^T`` instead of projecting the keys
  (the key bias is constant along the softmax axis and cancels; softmax rows sum to 1, so the value
  bias is added once); the positional encoding's share of the scores, ``q (pos W_k^T)^T``, uses a
  projection of ``pos`` made once per image, so ``keys + pos`` is never formed per prompt;
* image -> token attention: ``keys (W_q^T k^T)`` and ``softmax(.) (v W_o)`` per head, i.e. the 4096
  image tokens meet a (256 x heads*tokens) matrix instead of two 256 x 128 projections;
* block 0 sees the same image tokens for every prompt, so its image-side projections are made once
  per image (:meth:`PromptBatchDecoder.__init__`);
* the two stride-2 transposed convolutions of the upscaling head are per-pixel linear maps, run as
  matrix products split by output-row parity, so each product's mask logits are whole output rows
  (no sub-pixel shuffle);
* in fp32 inference the first of them is pushed back through the blocks' LayerNorms (per-token affine
  maps) onto their low-rank updates: the image's share is multiplied once per image and each prompt
  pays a product of inner size ~2 x heads x tokens instead of C (:meth:`PromptBatchDecoder._stage1_shared`).

Prompts run in chunks of ``chunk``: on CPU one at a time, so the per-prompt image tensors stay in cache; on
other devices (CUDA) 64 at a time, each product covering the whole chunk. Dense (mask) prompts
change the image tokens per prompt and take the official decoder path instead. The decoder computes in the
embedding's dtype with autocast turned off (it accumulates in place, which autocast does not cast): under
``SamPredictor(dtype="bfloat16")`` on CUDA the encoder runs in bfloat16 and the decoder in float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Any

import torch

from .. import cpu_gemm
from .common import autocast_active

#: prompts decoded together on CPU; larger chunks spill the per-prompt (4096 x 256) tensors out of cache
#: (ViT-B, 2 threads, 64 prompts: 35 ms/prompt at 1, 37 at 2 and 4, 55 at 8)
DEFAULT_CHUNK = 1
#: prompts decoded together on other devices (CUDA): one prompt per pass would launch ~150 small kernels per
#: prompt. 64 is the official automatic generator's ``points_per_batch``; a chunk of 64 box prompts peaks at
#: ~1.1 GB, the official decoder on the same 64 at ~1.8 GB (``benchmarks/sam_decoder_layout.py``, on CPU).
DEVICE_CHUNK = 64


def _no_autocast(device_type: str):
    """Autocast off for the decoder's in-place accumulations and ``out=`` products (autocast casts neither)."""
    if autocast_active(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _exact(method):
    """Run a :class:`PromptBatchDecoder` method with autocast off (see :func:`_no_autocast`)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with _no_autocast(self.src.device.type):
            return method(self, *args, **kwargs)
    return run


def _heads_weight(linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as (heads, d, C_in) and bias as (heads, d)."""
    w = linear.weight
    return w.reshape(heads, -1, w.shape[1]), linear.bias.reshape(heads, -1)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, ci = x.shape
    return x.reshape(b, n, heads, ci // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _bmm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ add)`` for (B, M, K) ``a``, (B|1, K, N) ``b`` and (B, M, N) ``add`` (which may be overwritten).

    Where float32 products go to oneDNN (:mod:`imseg.cpu_gemm`): one oneDNN product per prompt, ``add`` summed as
    it writes; oneDNN takes ``b`` as the transpose of its (N, K) weights, so the image tokens need no copy in either
    layout (Zen 5, 2 threads: 56 x 256 by 256 x 4096 in 0.32 ms against 0.68 ms in MKL's AVX2 code; 56 x 4096 by
    4096 x 256 in 0.33 against 0.69). Elsewhere one bmm / baddbmm_."""
    if not cpu_gemm.onednn_applies(a):
        b = b.expand(a.shape[0], -1, -1)
        return torch.bmm(a, b) if add is None else add.baddbmm_(a, b)
    rows = []
    for i in range(a.shape[0]):
        weight = b[i if b.shape[0] > 1 else 0].t()
        rows.append(torch.ops.mkldnn._linear_pointwise(a[i], weight, None, "none", [], "") if add is None else
                    torch.ops.mkldnn._linear_pointwise.binary(a[i], add[i], weight, None, "add"))
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)


class PromptBatchDecoder:
    """``model.mask_decoder`` on one image embedding for batches of sparse prompts (points, boxes).

    Args:
        model: a :class:`~imseg.sam.model.Sam`.
        embedding: (1, C, h, w) image embedding (``SamPredictor.features``).
        chunk: prompts per pass (memory/cache trade-off; results do not depend on it). Default:
            :data:`DEFAULT_CHUNK` on CPU, :data:`DEVICE_CHUNK` elsewhere.
        cpu_layout: one prompt and a band of image rows per upscaling product (True), or every prompt of a chunk
            and the whole grid (False). Default: True on CPU, False elsewhere; results do not depend on it.

    ``decoder(sparse, multimask_output)`` -> (low-res logits (B, M, 4h, 4w), IoU predictions (B, M)),
    the same as ``model.mask_decoder(embedding, dense_pe, sparse, no_mask_dense, multimask_output)``
    up to float re-association.
    """

    def __init__(self, model: Any, embedding: torch.Tensor, chunk: int | None = None,
                 cpu_layout: bool | None = None) -> None:
        if embedding.ndim != 4 or embedding.shape[0] != 1:
            raise ValueError(f"PromptBatchDecoder takes one (1, C, h, w) image embedding; got {tuple(embedding.shape)}")
        with _no_autocast(embedding.device.type):
            self._build(model, embedding, chunk, embedding.device.type == "cpu" if cpu_layout is None else cpu_layout)

    def _build(self, model: Any, embedding: torch.Tensor, chunk: int | None, on_cpu: bool) -> None:
        dec = model.mask_decoder
        pe = model.prompt_encoder
        self.dec = dec
        self.tr = dec.transformer
        self.chunk = max(1, int((DEFAULT_CHUNK if on_cpu else DEVICE_CHUNK) if chunk is None else chunk))
        # masks: on CPU one prompt and a band of image rows per product (cache-sized); elsewhere every prompt of
        # the call and the whole grid per product (a few large kernels instead of ~16 small ones per prompt)
        self.per_prompt = on_cpu
        self._stage1: tuple | None = None  # see _stage1_shared; made on first use, under the lock (CPU workers)
        self._stage1_lock = threading.Lock()
        self._factorable = all(layer.norm4.weight is not None and layer.norm4.bias is not None
                               for layer in dec.transformer.layers)
        # image tokens upscaled per band (32 rows of 64); ViT-B, 64 prompts on the CPU workers: 512-2048
        # within noise (29-32 ms per prompt), 4096 slower (32-40 ms)
        self.upscale_block = 2048
        up1, _, _, up2, _ = dec.output_upscaling
        # stride-2 kernel-2 transposed convs as per-pixel products, one per output-row parity dy:
        # weight (C_in, (dx, C_out)) and bias ((dx, C_out)) of sub-pixel row dy
        self._upscale_weights = tuple(
            (tuple(conv.weight.permute(0, 2, 3, 1)[:, dy].reshape(conv.weight.shape[0], -1).contiguous()
                   for dy in (0, 1)), conv.bias.repeat(2))
            for conv in (up1, up2))
        # the second product's weights as oneDNN takes them: (out columns, C_in) per sub-pixel row
        self._w2_rows = tuple(w.t().contiguous() for w in self._upscale_weights[1][0])
        dtype = embedding.dtype
        self.grid = tuple(embedding.shape[-2:])
        # (1, N, C) image tokens: embedding + "no mask" dense prompt, and their positional encoding
        src = embedding + pe.no_mask_embed.weight.reshape(1, -1, 1, 1).to(dtype)
        self.src = src.flatten(2).transpose(1, 2).contiguous()
        self.pos = pe.get_dense_pe().to(dtype).flatten(2).transpose(1, 2).contiguous()
        src_pos = self.src + self.pos
        self.output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).to(dtype)
        layer0 = self.tr.layers[0]
        # prompt-independent projections of block 0 (its keys are still the shared image tokens)
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        self.k0 = _split(t2i.k_proj(src_pos), t2i.num_heads)  # (1, h, N, d)
        self.v0 = _split(t2i.v_proj(self.src), t2i.num_heads)
        self.q0 = i2t.q_proj(src_pos).contiguous()  # (1, N, h*d)
        # later blocks add the positional encoding to per-prompt image tokens before projecting them; the
        # products are linear, so its share is projected once here, per head as (h, d, N) (no bias: the key
        # bias cancels in the softmax, the query bias is added with the prompt's own part)
        self._pos_proj: dict[int, torch.Tensor] = {}
        for layer in list(self.tr.layers)[1:]:
            self._project_pos(layer.cross_attn_token_to_image.k_proj, layer.cross_attn_token_to_image.num_heads)
            self._project_pos(layer.cross_attn_image_to_token.q_proj, layer.cross_attn_image_to_token.num_heads)
        final = self.tr.final_attn_token_to_image
        self._project_pos(final.k_proj, final.num_heads)

    def _project_pos(self, linear, heads: int) -> None:
        w, _ = _heads_weight(linear, heads)  # (h, d, C)
        self._pos_proj[id(linear)] = (w.to(self.pos.dtype) @ self.pos[0].t()).contiguous()  # (h, d, N)

    def _pos_scores(self, qs: torch.Tensor, linear) -> torch.Tensor:
        """(B, h, T, d) scaled per-head queries -> (B, h*T, N) their products with ``linear``'s projection of
        pos, as one (h, B*T, d) x (h, d, N) product (a broadcast (B, h, T, d) @ (1, h, d, N) matmul would copy
        the projection B times)."""
        b, h, t, d = qs.shape
        scores = (qs.transpose(0, 1).reshape(h, b * t, d) @ self._pos_proj[id(linear)]).view(h, b, t, -1)
        return scores.transpose(0, 1).reshape(b, h * t, -1)  # a copy only when B > 1

    # -- attention of a prompt's few tokens to the many image tokens -----------------------------
    def _tokens_to_image(self, attn, queries: torch.Tensor, keys, shared=None) -> torch.Tensor:
        """``attn(q=queries, k=keys + pos, v=keys)`` for (B, T, C) queries and (B, N, C) image tokens."""
        h = attn.num_heads
        q = _split(attn.q_proj(queries), h)  # (B, h, T, d)
        d = q.shape[-1]
        if shared is not None:
            k, v = shared
            out = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1) @ v
        else:
            wk, _ = _heads_weight(attn.k_proj, h)  # (h, d, C); the k bias cancels in the softmax
            wv, bv = _heads_weight(attn.v_proj, h)
            b, _, t, _ = q.shape
            qs = q / math.sqrt(d)
            qk = (qs @ wk).reshape(b, h * t, -1)  # (B, h*T, C)
            logits = self._pos_scores(qs, attn.k_proj)  # positional part (B, h*T, N)
            weights = torch.softmax(_bmm(qk, keys.transpose(1, 2), logits), dim=-1)
            mixed = _bmm(weights, keys).reshape(b, h, t, -1)  # (B, h, T, C)
            out = mixed @ wv.transpose(1, 2) + bv[None, :, None, :]  # (B, h, T, d)
        return attn.out_proj(_merge(out))

    def _image_to_tokens(self, attn, residual: torch.Tensor, queries: torch.Tensor, query_pe: torch.Tensor,
                         shared_q=None, parts: list | None = None) -> torch.Tensor:
        """``residual + attn(q=residual + pos, k=queries + query_pe, v=queries)``: (B|1, N, C) -> (B, N, C).
        The update is ``weights^T u``; with ``parts`` given, ``weights`` (B, heads*T, N) and ``u`` (B, heads*T, C)
        are appended to it.

        Scores are laid out (B, heads*T, N), so the softmax over a prompt's T tokens runs along a
        strided axis with the N image tokens contiguous (a softmax over a last axis of ~7 is slow).
        """
        h = attn.num_heads
        k = _split(attn.k_proj(queries + query_pe), h)  # (B, h, T, d)
        v = _split(attn.v_proj(queries), h)
        b, _, t, d = k.shape
        ks = k / math.sqrt(d)
        if shared_q is not None:  # (1, N, h*d) projected image queries: block-diagonal per-head product
            blocks = ks.new_zeros(b, h, t, h, d)
            idx = torch.arange(h, device=ks.device)
            blocks[:, idx, :, idx, :] = ks.transpose(0, 1)
            logits = _bmm(blocks.reshape(b, h * t, h * d), shared_q.transpose(1, 2))  # (B, h*T, N)
        else:
            wq, bq = _heads_weight(attn.q_proj, h)  # (h, d, C), (h, d)
            mt = (ks @ wq).reshape(b, h * t, -1)  # (B, h*T, C)
            bias = (bq[None, :, None, :] * ks).sum(-1).reshape(b, h * t, 1)
            logits = _bmm(mt, residual.transpose(1, 2), self._pos_scores(ks, attn.q_proj).add_(bias))
        weights = torch.softmax(logits.view(b, h, t, -1), dim=2).view(b, h * t, -1)  # each head's T sum to 1
        wo = attn.out_proj.weight  # (C, h*d)
        u = v @ wo.reshape(wo.shape[0], h, d).permute(1, 2, 0)[None]  # (B, h, T, C)
        # the out-projection bias rides on u: every image token's weights sum to h (one per head)
        u = (u + attn.out_proj.bias / h).reshape(b, h * t, -1)
        if parts is not None:
            parts.extend((weights, u))
        if shared_q is None and not torch.is_grad_enabled():
            # blocks after the first: the residual is the prompts' own image tokens, not needed after
            return residual.baddbmm_(weights.transpose(1, 2), u)
        if residual.shape[0] != b:
            residual = residual.expand(b, -1, -1)
        return torch.baddbmm(residual, weights.transpose(1, 2), u)

    def _block(self, layer, queries, keys, query_pe, first: bool, record: list | None = None):
        # the token side spelled out (not a method of our block): ``model`` may be an official SAM too
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        if first:
            upd = self._tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, None,
                                        shared=(self.k0, self.v0))
        else:
            upd = self._tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys)
        queries = layer.norm2(queries + upd)
        queries = layer.norm3(queries + layer.mlp(queries))
        parts: list | None = None if record is None else []
        if first:
            keys = self._image_to_tokens(layer.cross_attn_image_to_token, self.src, queries, query_pe,
                                         shared_q=self.q0, parts=parts)
        else:
            keys = self._image_to_tokens(layer.cross_attn_image_to_token, keys, queries, query_pe, parts=parts)
        if record is None:
            return queries, layer.norm4(keys)
        norm = layer.norm4
        keys, mean, rstd = torch.native_layer_norm(keys, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        record.append((*parts, mean, rstd))  # this block's (weights, u, mean, rstd)
        return queries, keys

    def transformer(self, sparse: torch.Tensor, record: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, C) prompt embeddings -> (B, T, C) token outputs and (B, N, C) image tokens.

        With ``record`` (a list), each block appends the factors of its image-token update for
        :meth:`masks`' factored first upscaling product: (weights, u, mean, rstd) of its LayerNorm."""
        b = sparse.shape[0]
        tokens = torch.cat([self.output_tokens[None].expand(b, -1, -1), sparse.to(self.src.dtype)], dim=1)
        queries, keys = tokens, None
        for i, layer in enumerate(self.tr.layers):
            queries, keys = self._block(layer, queries, keys, tokens, first=i == 0, record=record)
        upd = self._tokens_to_image(self.tr.final_attn_token_to_image, queries + tokens, keys)
        return self.tr.norm_final_attn(queries + upd), keys

    @_exact
    def predict(self, sparse: torch.Tensor,
                record: list | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """IoU predictions of all mask tokens (B, T) and the (tokens, image tokens) that make their masks
        (``record``: see :meth:`transformer`)."""
        hs, keys = self.transformer(sparse, record)
        return self.dec.iou_prediction_head(hs[:, 0, :]), (hs, keys)

    def predict_chunks(self, sparse: torch.Tensor) -> tuple[torch.Tensor, list[tuple]]:
        """IoU predictions (B, T) of every prompt, decoded :attr:`chunk` prompts at a time, and each chunk's
        ``(hs, keys, record)`` for :meth:`masks_of` (``record``: the factored first upscaling product's
        factors in fp32 inference, else None).

        On CPU a chunk's (4096 x 256) image tokens stay in cache through the blocks: one prompt at a time ran
        9.0 ms a prompt against 14.9 ms for 64 together (ViT-B, 2 threads, Zen 5)."""
        factored = self._factorable and self.src.dtype == torch.float32 and not torch.is_grad_enabled()
        ious, chunks = [], []
        for s in range(0, sparse.shape[0], self.chunk):
            record: list | None = [] if factored else None
            iou, (hs, keys) = self.predict(sparse[s : s + self.chunk], record)
            ious.append(iou)
            chunks.append((hs, keys, record))
        return torch.cat(ious) if ious else sparse.new_empty(0, self.dec.num_mask_tokens), chunks

    def masks_of(self, chunks: list[tuple], ids: torch.Tensor, mask_ids: list[int]) -> torch.Tensor:
        """(P, len(mask_ids), 4h, 4w) low-res logits of the prompts ``ids`` ((P,) indices into the prompts
        :meth:`predict_chunks` decoded into ``chunks``), in the order of ``ids``."""
        h, w = self.grid
        out = self.src.new_empty(len(ids), len(mask_ids), 4 * h, 4 * w)
        ids = ids.cpu()
        for c, (hs, keys, record) in enumerate(chunks):
            rows = torch.nonzero((ids // self.chunk) == c).flatten()
            if rows.numel() == 0:
                continue
            local = ids[rows] - c * self.chunk
            if not torch.equal(local, torch.arange(keys.shape[0])):  # some of the chunk's prompts, or another order
                local = local.to(keys.device)
                hs, keys = hs[local], keys[local]
                record = None if record is None else [tuple(t[local] for t in part) for part in record]
            out[rows.to(out.device)] = self.masks(hs, keys, mask_ids, record=record)
        return out

    def _stage1_shared(self) -> tuple:
        """Per-image pieces of the factored first upscaling product (:meth:`_stage1_factors`), made once.

        Block i's image tokens are ``keys_{i+1} = LN_i(keys_i + weights_i^T u_i)`` with ``keys_0`` the image's own
        tokens (``src``), and the LayerNorm is a per-token affine map ``(x - mean) * rstd * g_i + b_i``. Pushing
        the first upscaling weight ``W`` back through the blocks, with ``G_depth = W``, ``G_i = diag(g_i) G_{i+1}``
        and ``r_i`` the product of the ``rstd`` of blocks i.., gives

            keys_depth W = r_0 (src G_0) + sum_i (r_i weights_i^T)(u_i G_i) - sum_i r_i mean_i (g_i G_{i+1})
                           + sum_{i<depth-1} r_{i+1} (b_i G_{i+1}) + b_{depth-1} W

        ``src G_0`` is the same for every prompt; what is left per prompt is one product with an inner size of
        ~2 x heads x tokens instead of C. Returns (G_0..G_{depth-1}, src G_0 per output-row parity, the rows
        g_i G_{i+1} and b_i G_{i+1} stacked, the constant per parity)."""
        with self._stage1_lock:
            if self._stage1 is None:
                self._stage1 = self._make_stage1()
        return self._stage1

    def _make_stage1(self) -> tuple:
        (w1, b1), _ = self._upscale_weights
        norms = [layer.norm4 for layer in self.tr.layers]
        depth, half = len(norms), w1[0].shape[1]
        g = [torch.cat(w1, dim=1)]  # (C, both parities' columns)
        for norm in reversed(norms):
            g.insert(0, norm.weight[:, None] * g[0])
        s = self.src[0] @ g[0]
        rows = [norms[i].weight @ g[i + 1] for i in range(depth)]
        rows += [norms[i].bias @ g[i + 1] for i in range(depth - 1)]
        const = norms[-1].bias @ g[depth] + torch.cat([b1, b1])
        return (tuple(g[:depth]), tuple(s[:, k * half : (k + 1) * half].contiguous() for k in (0, 1)),
                torch.stack(rows), const.split(half))

    def _stage1_factors(self, record: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's factors of the first upscaling product from :meth:`transformer`'s ``record``: left
        (B, K, N) and right (B, K, D) with ``keys W = left^T right + r_0 (src G_0) + const``, and r_0 (B, N, 1)."""
        gs, _, rows, _ = self._stage1_shared()
        weights, us, means, rstds = zip(*record, strict=True)
        scales = [rstds[-1]]  # r_i = rstd_i * r_{i+1}, built from the last block back
        for rstd in reversed(rstds[:-1]):
            scales.insert(0, rstd * scales[0])
        col = [r.transpose(1, 2) for r in scales]  # (B, 1, N)
        left = [a * r for a, r in zip(weights, col, strict=True)]
        left += [(r * mean).neg_().transpose(1, 2) for r, mean in zip(scales, means, strict=True)]
        left += col[1:]
        right = [u @ g for u, g in zip(us, gs, strict=True)]
        right.append(rows[None].expand(us[0].shape[0], -1, -1))
        return torch.cat(left, 1), torch.cat(right, 1), scales[0]

    @_exact
    def masks(self, hs: torch.Tensor, keys: torch.Tensor, mask_ids: list[int],
              out: torch.Tensor | None = None, record: list | None = None) -> torch.Tensor:
        """(B, len(mask_ids), 4h, 4w) low-res logits of mask tokens ``mask_ids`` (0 = single, 1..3 = multimask),
        written into ``out`` when given.

        The upscaling head runs split by output-row parity (four products per band, each giving every fourth
        output row whole). On CPU (``per_prompt``) it runs one prompt and a band of image rows at a time, so a
        band's intermediates stay in cache; elsewhere each product covers every prompt and the whole grid.
        With ``record`` (filled by :meth:`transformer` for these prompts) the first product comes from the
        factored form of :meth:`_stage1_shared`: ~120 instead of ~270 million multiply-adds per prompt (ViT-B)."""
        _, norm, act1, _, act2 = self.dec.output_upscaling
        (w1, b1), (w2, b2) = self._upscale_weights
        b = keys.shape[0]
        if record is not None:
            _, src_g, _, const = self._stage1_shared()
            left, right, r0 = self._stage1_factors(record)
            half = w1[0].shape[1]
        gh, gw = self.grid
        c1, c2 = w1[0].shape[1] // 2, w2[0].shape[1] // 2
        hyper = torch.stack([self.dec.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in mask_ids], dim=1)
        m = hyper.shape[1]
        if out is None:
            out = keys.new_empty(b, m, 4 * gh, 4 * gw)
        if self.per_prompt:  # CPU: one prompt and a band of image rows at a time, in cache
            groups, band = [(i, i + 1) for i in range(b)], max(1, self.upscale_block // gw)
        else:  # accelerators: every prompt and the whole grid in each product (a few large kernels)
            groups, band = [(0, b)] if b else [], gh
        for i0, i1 in groups:
            n = i1 - i0
            for y0 in range(0, gh, band):
                y1 = min(gh, y0 + band)
                t0, t1 = y0 * gw, y1 * gw  # the band's image tokens
                for dy1 in (0, 1):  # sub-pixel row of the first stage: rows (prompt, y, x, dx1)
                    if record is None:  # (n, tokens, C) rows are contiguous: one product for the group
                        a = torch.addmm(b1, keys[i0:i1, t0:t1].reshape(-1, keys.shape[-1]), w1[dy1])
                    else:
                        lhs = left[i0:i1, :, t0:t1].transpose(1, 2)  # (n, tokens, K)
                        rhs = right[i0:i1, :, dy1 * half : (dy1 + 1) * half]  # (n, K, D)
                        a = (torch.addmm(const[dy1], lhs[0], rhs[0]) if n == 1
                             else torch.baddbmm(const[dy1], lhs, rhs)).view(n, t1 - t0, -1)
                        a.addcmul_(src_g[dy1][t0:t1], r0[i0:i1, t0:t1])
                    a = a.view(-1, c1)
                    a = act1(torch.nn.functional.layer_norm(a, (c1,), norm.weight, norm.bias, norm.eps))
                    for dy2 in (0, 1):  # and of the second: rows (prompt, y, x, dx1), columns (dx2, C2)
                        z = self._second_upscale(a, dy2, act2).view(n, -1, c2)
                        # (n, M, rows * (x, dx1, dx2)) = output rows 4*y + 2*dy1 + dy2, each a contiguous
                        # run of columns 4*x + 2*dx1 + dx2
                        logits = (hyper[i0] @ z[0].t())[None] if n == 1 else hyper[i0:i1] @ z.transpose(1, 2)
                        out[i0:i1, :, 4 * y0 + 2 * dy1 + dy2 : 4 * y1 : 4] = logits.view(n, m, y1 - y0, 4 * gw)
        return out

    def _second_upscale(self, a: torch.Tensor, dy2: int, act: Any) -> torch.Tensor:
        """``act(a @ W2[dy2] + b2)``: where float32 products go to oneDNN (:mod:`imseg.cpu_gemm`), one oneDNN
        product with the bias and an exact GELU applied as it writes its output (the official head's GELU);
        elsewhere ``addmm`` then ``act``."""
        (_, _), (w2, b2) = self._upscale_weights
        if type(act) is torch.nn.GELU and act.approximate == "none" and cpu_gemm.onednn_applies(a):
            return torch.ops.mkldnn._linear_pointwise(a, self._w2_rows[dy2], b2, "gelu", [], "none")
        return act(torch.addmm(b2, a, w2[dy2]))

    def __call__(self, sparse: torch.Tensor, multimask_output: bool = True,
                 out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, C) sparse prompt embeddings -> low-res logits (B, M, 4h, 4w), IoU predictions (B, M).

        ``out``: a (B, M, 4h, 4w) tensor to write the logits into (no per-chunk copies to concatenate)."""
        mask_ids = list(range(1, self.dec.num_mask_tokens)) if multimask_output else [0]
        h, w = self.grid
        b = sparse.shape[0]
        if out is None:
            out = sparse.new_empty(b, len(mask_ids), 4 * h, 4 * w, dtype=self.src.dtype)
        elif tuple(out.shape) != (b, len(mask_ids), 4 * h, 4 * w):
            raise ValueError(f"out must be {(b, len(mask_ids), 4 * h, 4 * w)}, got {tuple(out.shape)}")
        ious = sparse.new_empty(b, len(mask_ids), dtype=self.src.dtype)
        # the factored first upscaling product: plain fp32 inference (its re-association is checked in fp32 only)
        factored = self._factorable and self.src.dtype == torch.float32 and not torch.is_grad_enabled()
        for s in range(0, b, self.chunk):
            record: list | None = [] if factored else None
            iou, (hs, keys) = self.predict(sparse[s : s + self.chunk], record)
            self.masks(hs, keys, mask_ids, out=out[s : s + self.chunk], record=record)
            ious[s : s + self.chunk] = iou[:, mask_ids]
        return out, ious
