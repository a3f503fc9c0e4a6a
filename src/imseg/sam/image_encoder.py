"""SAM's ViT image encoder (ViT-B/L/H): windowed + global attention with decomposed relative positions.

Parameter names equal the official ``segment_anything`` ones, so official checkpoints load unchanged.
Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with the relative
position bias passed as ``attn_mask``; global attention runs one head at a time on CPU and can run
in query chunks (``query_chunk`` queries at a time) to bound the bias tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_gemm import attention, linear, onednn_applies
from .common import LayerNorm2d, MLPBlock, autocast_active, plain_modules

#: Queries per SDPA call in global-attention blocks (rounded down to whole token rows). 4096 is
#: the whole 64x64 grid of a 1024x1024 input. On CPU in eager inference each call covers ONE head,
#: so the bias buffer is 4096 x 4096 floats (64 MB); elsewhere (CUDA, autograd, export) a call
#: covers every head, a heads x 4096 x 4096 bias (~800 MB for ViT-B, ~1.1 GB for ViT-L/H; the
#: official encoder holds about three such maps). Set an attention's ``query_chunk`` lower to bound
#: memory further.
DEFAULT_QUERY_CHUNK = 4096


class Scratch:
    """Reusable work buffers for one encoder forward pass, keyed by name, shape and dtype.

    Large temporaries (qkv, MLP hidden, attention bias) are the same size in every block; reusing
    them avoids fresh multi-MB allocations (page faults) per block. Freed with the forward pass.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
        key = (name, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = like.new_empty(shape)
        return buf


def _eager_inference(device_type: str) -> bool:
    """True in plain eager inference: no autograd graph to keep, no tracer/exporter/compiler watching,
    no autocast (they get the straightforward ops, without ``out=`` buffers and in-place GELU; autocast
    does not cast the inputs of ``out=``/in-place ops, so the buffered path would run in float32)."""
    if torch.is_grad_enabled() or torch.jit.is_tracing() or autocast_active(device_type):
        return False
    compiler = getattr(torch, "compiler", None)
    for check in ("is_compiling", "is_exporting"):
        fn = getattr(compiler, check, None)
        if fn is not None and fn():
            return False
    onnx_check = getattr(getattr(torch, "onnx", None), "is_in_onnx_export", None)
    return not (onnx_check is not None and onnx_check())


class ImageEncoderViT(nn.Module):
    """(B, 3, img_size, img_size) normalised image -> (B, out_chans, img_size/16, img_size/16) embedding."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        scratch = Scratch() if _eager_inference(x.device.type) and plain_modules(self) else None
        for blk in self.blocks:
            x = blk(x, scratch)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous channels-last: the residual stream keeps the layout of its first tensor, and a
        # permuted NCHW view would make every later add/norm/reshape a strided copy
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size > 0`` attends within non-overlapping windows."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        if scratch is None:
            x = x + self.attn(self.norm1(x), self.window_size)
            return x + self.mlp(self.norm2(x))
        # plain eager inference (``scratch`` given): ``x`` is the encoder's own residual stream, so
        # both output projections accumulate into it in place (GEMM with beta=1, then the bias):
        # no separate residual-add pass and no fresh (B, H, W, C) tensor per block
        x = self.attn(self.norm1(x), self.window_size, scratch, residual=x)
        # the MLP with its large hidden activation written into a reused buffer, GELU in place
        h = self.norm2(x).flatten(0, -2)
        lin1, lin2 = self.mlp.lin1, self.mlp.lin2
        buffer = None if onednn_applies(h) else scratch.get("mlp", h, h.shape[0], lin1.out_features)  # oneDNN: no out=
        hidden = linear(h, lin1.weight, lin1.bias, out=buffer)
        if isinstance(self.mlp.act, nn.GELU) and self.mlp.act.approximate == "none":
            torch.ops.aten.gelu_(hidden)
        else:
            hidden = self.mlp.act(hidden)
        return _accumulate(x, hidden, lin2)


def _accumulate(residual: torch.Tensor, inp: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``residual += layer(inp)`` in place; residual (..., C_out) contiguous, inp (..., C_in)."""
    flat = residual.view(-1, layer.out_features)
    inp = inp.reshape(-1, layer.in_features)
    if onednn_applies(flat):
        flat.add_(linear(inp, layer.weight, layer.bias))  # oneDNN has no in-place accumulation
        return residual
    flat.addmm_(inp, layer.weight.t())
    if layer.bias is not None:
        flat.add_(layer.bias)
    return residual


def _axis_pieces(n: int, ws: int) -> list[tuple[int, int, int, int, int]]:
    """An axis of ``n`` tokens cut into windows of ``ws``: (start, stop, first window, windows,
    tokens per window) for the whole windows, then for the last partial one."""
    full = n // ws
    pieces = [(0, full * ws, 0, full, ws)] if full else []
    if n % ws:
        pieces.append((full * ws, n, full, 1, n % ws))
    return pieces


def _copy_windows(grid: torch.Tensor, windows: torch.Tensor, ws: int, *, to_windows: bool,
                  fill: torch.Tensor | None = None) -> None:
    """Copy between a token grid (B, H, W, *F) and its windows (B*nh*nw, ws, ws, *F) (any strides),
    nh = ceil(H/ws), nw = ceil(W/ws); with ``to_windows`` the padding tokens are set to ``fill``."""
    b, h, w = grid.shape[:3]
    nh, nw = -(-h // ws), -(-w // ws)
    win = windows.unflatten(0, (b, nh, nw))  # (B, nh, nw, ws, ws, *F)
    for y0, y1, wy, ny, ry in _axis_pieces(h, ws):
        for x0, x1, wx, nx, rx in _axis_pieces(w, ws):
            g = grid[:, y0:y1, x0:x1].unflatten(2, (nx, rx)).unflatten(1, (ny, ry))  # (B, ny, ry, nx, rx, *F)
            t = win[:, wy : wy + ny, wx : wx + nx, :ry, :rx].transpose(2, 3)
            if to_windows:
                t.copy_(g)
            else:
                g.copy_(t)
    if to_windows and fill is not None:
        if h % ws:
            win[:, nh - 1, :, h % ws :].copy_(fill)
        if w % ws:
            win[:, :, nw - 1, :, w % ws :].copy_(fill)


def _resized_table(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table linearly resized to ``length`` rows (unchanged if L == length)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    return F.interpolate(rel_pos.t()[None], size=length, mode="linear")[0].t()


def relative_positions(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings of every (query, key) offset along one axis: (q_size, k_size, C).

    ``rel_pos`` is (L, C) for offsets -(L-1)/2..(L-1)/2; it is linearly resized when L does not
    equal 2*max(q_size, k_size)-1.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t()[None], size=length, mode="linear")[0].t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    index = (q_coords - k_coords + (k_size - 1) * k_scale).long()
    return rel_pos[index]


class Attention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) token grid with decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.query_chunk = DEFAULT_QUERY_CHUNK
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, window_size: int = 0, scratch: Scratch | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, C) normalised tokens -> (B, H, W, C) attention output (after ``proj``).

        With ``residual`` (contiguous (B, H, W, C)), the output is added into it in place and it is
        returned (eager inference only).
        """
        b, h, w, c = x.shape
        # projected before window padding: padded tokens only ever see the bias
        if scratch is not None and self.qkv.bias is not None:
            flat = x.reshape(-1, c)
            buffer = None if onednn_applies(flat) else scratch.get("qkv", flat, flat.shape[0], self.qkv.out_features)
            qkv = linear(flat, self.qkv.weight, self.qkv.bias, out=buffer).view(b, h, w, -1)
        else:
            qkv = self.qkv(x)
        if window_size > 0 and scratch is not None:
            # eager inference: one strided copy into the windows and one out of them
            ws = window_size
            nh, nw = -(-h // ws), -(-w // ws)
            windows = scratch.get("windows", qkv, b * nh * nw, ws, ws, qkv.shape[-1])
            fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
            _copy_windows(qkv, windows, ws, to_windows=True, fill=fill.to(qkv.dtype))
            heads = self._attend(windows, scratch, raw=True)  # (B*nW, heads, ws*ws, d)
            heads = heads.unflatten(2, (ws, ws)).permute(0, 2, 3, 1, 4)  # (B*nW, ws, ws, heads, d)
            out = qkv.new_empty(b, h, w, self.num_heads, heads.shape[-1])
            _copy_windows(out, heads, ws, to_windows=False)
            out = out.view(b, h, w, -1)
        elif window_size > 0:
            qkv, (hp, wp) = self._partition(qkv, window_size)  # (B*nW, ws, ws, 3C)
            out = self._attend(qkv, scratch)  # (B*nW, ws, ws, C)
            out = self._unpartition(out, window_size, b, (hp, wp), (h, w))
        else:
            out = self._attend(qkv, scratch)
        if residual is not None:
            return _accumulate(residual, out, self.proj)
        return self.proj(out)

    def _partition(self, qkv: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
        b, h, w, c3 = qkv.shape
        pad_h, pad_w = (-h) % ws, (-w) % ws
        hp, wp = h + pad_h, w + pad_w
        if pad_h or pad_w:
            # zero tokens after the LayerNorm project to exactly the qkv bias
            fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(c3)
            padded = fill.to(qkv.dtype).expand(b, hp, wp, c3).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        qkv = qkv.view(b, hp // ws, ws, wp // ws, ws, c3).transpose(2, 3).reshape(-1, ws, ws, c3)
        return qkv, (hp, wp)

    @staticmethod
    def _unpartition(
        out: torch.Tensor, ws: int, b: int, padded: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        hp, wp = padded
        h, w = size
        c = out.shape[-1]
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if hp > h or wp > w:
            out = out[:, :h, :w]
        return out

    def _attend(self, qkv: torch.Tensor, scratch: Scratch | None = None, raw: bool = False) -> torch.Tensor:
        """qkv: (B', h, w, 3C) -> (B', h, w, C) attention over the h*w tokens of each item
        (``raw``: the SDPA layout (B', heads, h*w, C/heads), no copy)."""
        b, h, w, _ = qkv.shape
        n = h * w
        qkv = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B', heads, N, d)
        d = q.shape[-1]
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif scratch is not None and not raw and q.device.type == "cpu":
            return self._attend_per_head(q, k, v, h, w, scratch)
        else:
            if scratch is not None:
                full_h, full_w = self._rel_bias_views(q, h, w, scratch=scratch)
            else:
                rh = relative_positions(h, h, self.rel_pos_h).to(q.dtype)  # (h, h, d)
                rw = relative_positions(w, w, self.rel_pos_w).to(q.dtype)  # (w, w, d)
            chunk = max(w, (self.query_chunk // w) * w)  # whole query rows per chunk
            outs = []
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                q_rows = q[:, :, start:stop]  # (B', heads, L, d), L = rows * w
                rows = (stop - start) // w
                r0 = start // w
                # bias[q=(y, x), k=(ky, kx)] = q . Rh[y, ky] + q . Rw[x, kx]
                if scratch is not None:
                    bias_h, bias_w = full_h[:, :, r0 : r0 + rows], full_w[:, :, r0 : r0 + rows]
                else:
                    qg = q_rows.reshape(b, self.num_heads, rows, w, d)
                    bias_h = torch.einsum("bnyxd,ykd->bnyxk", qg, rh[r0 : r0 + rows])  # (.., rows, w, h)
                    bias_w = torch.einsum("bnyxd,xkd->bnyxk", qg, rw)  # (.., rows, w, w)
                shape = (b, self.num_heads, rows, w, h, w)  # contiguous, so the view below is free
                if scratch is None:  # autograd / tracing: no out= buffers
                    bias = bias_h[..., :, None] + bias_w[..., None, :]
                else:
                    bias = torch.add(bias_h[..., :, None], bias_w[..., None, :], out=scratch.get("bias", q, *shape))
                bias = bias.reshape(b, self.num_heads, stop - start, n)  # a view for the buffer
                outs.append(attention(q_rows, k, v, bias, scale=self.scale))  # oneDNN's products where faster
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if raw:
            return out
        return out.transpose(1, 2).reshape(b, h, w, -1)

    def _attend_per_head(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int,
                         scratch: Scratch) -> torch.Tensor:
        """Global attention on CPU, eager inference: one head (and ``query_chunk`` queries) per SDPA call.

        q, k, v: (B', heads, h*w, d) views of the qkv buffer -> (B', h, w, C). Each head's relative
        position terms (B' x h*w x (Lh + Lw) floats, 4 MB for a 64x64 grid) and its bias block stay
        small, so the bias is written and read in cache instead of a heads x N x N map in memory
        (~800 MB for ViT-B, faulted in afresh on every forward pass); the outputs land directly in
        the (B', h, w, heads, d) layout the output projection reads, with no transpose copy after.
        """
        b, heads, n, d = q.shape
        chunk = max(w, (self.query_chunk // w) * w)  # whole query rows per chunk
        out = q.new_empty(b, h, w, heads, d)
        flat_out = out.view(b, n, heads, d)
        table = self._rel_table(h, w, q.dtype)
        for head in range(heads):
            qh, kh, vh = q[:, head : head + 1], k[:, head : head + 1], v[:, head : head + 1]
            full_h, full_w = self._rel_bias_views(qh, h, w, table, scratch)  # (B', 1, h, w, h), (B', 1, h, w, w)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                rows, r0 = (stop - start) // w, start // w
                bias = torch.add(full_h[:, :, r0 : r0 + rows, :, :, None], full_w[:, :, r0 : r0 + rows, :, None, :],
                                 out=scratch.get("bias", q, b, 1, rows, w, h, w))
                flat_out[:, start:stop, head] = F.scaled_dot_product_attention(
                    qh[:, :, start:stop], kh, vh, attn_mask=bias.view(b, 1, stop - start, n), scale=self.scale
                )[:, 0]
        return out.view(b, h, w, heads * d)

    def _rel_bias_views(self, q: torch.Tensor, h: int, w: int, table: torch.Tensor | None = None,
                        scratch: Scratch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both bias terms from ONE matrix product: q (B', heads, h*w, d) -> strided views
        bias_h (B', heads, h, w, h) = q . Rh[y, ky] and bias_w (B', heads, h, w, w) = q . Rw[x, kx].

        ``P = q @ [flip(Rh); flip(Rw)]^T`` scores every query against every relative offset; with the
        tables flipped, the offsets a query row y needs are the contiguous run ``h-1-y .. 2h-2-y``,
        so the (y, ky) term is a stride trick on P, not a gather or a per-row batched product.
        """
        b, heads, n, d = q.shape
        if table is None:
            table = self._rel_table(h, w, q.dtype)
        flat = q.reshape(-1, d)
        out = None if scratch is None else scratch.get("relpos", q, flat.shape[0], table.shape[0])
        p = torch.mm(flat, table.t(), out=out).view(b, heads, h, w, -1)  # (B', heads, h, w, Lh + Lw)
        sb, sn, sy, sx, _ = p.stride()
        base = p.storage_offset()
        bias_h = p.as_strided((b, heads, h, w, h), (sb, sn, sy - 1, sx, 1), base + h - 1)
        bias_w = p.as_strided((b, heads, h, w, w), (sb, sn, sy, sx - 1, 1), base + 2 * h - 1 + w - 1)
        return bias_h, bias_w

    def _rel_table(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """[flip(Rh); flip(Rw)]: (2h - 1 + 2w - 1, d), the tables resized to an h x w grid."""
        rh = _resized_table(self.rel_pos_h, 2 * h - 1)
        rw = _resized_table(self.rel_pos_w, 2 * w - 1)
        return torch.cat([rh.flip(0), rw.flip(0)]).to(dtype)
