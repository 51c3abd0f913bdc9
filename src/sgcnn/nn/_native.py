"""The native diverse-group convolution kernel (x86-64 AVX-512, fp32, NCHW), built on first use.

A diverse group convolution cannot be handed to oneDNN: its groups have unequal sizes and
overlapping input-channel sets. Gathering each group's input channels into a copy costs about
``g * keep`` times the input's memory traffic (6.4x for g = 16 at 40% kept), which is more than
the arithmetic saved. This kernel gathers nothing: it reads each group's input planes in place.

For output filter ``n`` of group ``j`` and output position ``q`` it computes::

    y[b, n, q] = relu?( bias[n] + residual?[b, n, q] + sum_{e in E_j} w[n, e] * src[b, off_e + q] )

where the *entries* ``E_j`` of group ``j`` are its (kept input channel, kernel tap) pairs and
``off_e`` is where that channel's plane, shifted by that tap, starts in ``src``. ``src`` is the
input itself for a 1x1 stride-1 convolution, otherwise a zero-padded copy (stride 1), or the
``s_h x s_w`` polyphase split of the padded input (stride > 1), so that every tap of every
channel is one contiguous run of memory and output positions map to consecutive addresses
(each output row carries ``k - 1`` junk columns that are computed and dropped). The padded copy
is made once per call (1x the input), not once per group.

Work is split into items (image, block of ``16 * block`` positions, chunk of at most
``rows <= 16`` filters of one group) run by OpenMP threads (torch's pool and thread count).
Each item keeps ``filters x vectors`` accumulators in registers: per entry it loads
``vectors`` input vectors and broadcasts one weight per filter, so small groups still fill the
16-float lanes. The epilogue adds the bias, an optional residual and an optional ReLU, so a
following BatchNorm (folded into ``w`` and ``bias``), the residual addition and the ReLU cost
no memory pass.

The C source is generated here, compiled with the system C compiler (``$CC`` or ``cc``,
``-O3 -march=native -fopenmp``) into ``$SGCNN_CACHE`` (default ``~/.cache/sgcnn``), and loaded
with ``ctypes``. ``SGCNN_NATIVE=0`` disables it; :func:`available` says whether it can run
(a compiler, an x86-64 CPU with AVX-512F). The operator is registered as the PyTorch custom op
``sgcnn::dg_conv2d`` so that ``torch.export`` can trace, save and reload models that use it.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch.utils.flop_counter import register_flop_formula

RMAX = 16  # filters per chunk (register block rows), at most
VB = 12  # vectors (of 16 positions) per position block, at most
# Vectors per kernel call for R filters: R * V accumulators + V inputs + 1 weight <= 32
# zmm registers (capped by VB). Few filters: many positions per weight; many filters (tall
# chunks, for layers whose input rows stream from L2): one input vector feeds R FMAs.
VMAX_FOR_R = {r: min(VB, (31 - 1) // (r + 1)) for r in range(1, RMAX + 1)}
VMAX_FOR_R.update({1: 12, 2: 8, 3: 6, 4: 6, 5: 4, 6: 4})
PREFETCH = 2  # entries ahead for software prefetch


def _kernel(r: int, v: int) -> str:
    """``k_r_v``: accumulate ``r`` filters x ``v`` vectors over a chunk's entries."""
    lines = [
        f"static void k_{r}_{v}(__mmask16 ml, const float* __restrict xb, "
        "const int64_t* __restrict offs, int64_t ne, const float* __restrict w, "
        "float* __restrict out) {"
    ]
    lines += [f"  __m512 a{i}_{j} = _mm512_setzero_ps();" for i in range(r) for j in range(v)]
    lines.append("  for (int64_t e = 0; e < ne; e++) {")
    lines.append("    const float* p = xb + offs[e];")
    lines.append(f"    const float* pf = xb + offs[e + {PREFETCH}];")
    lines += [f"    _mm_prefetch((const char*)(pf + {16 * j}), _MM_HINT_T0);" for j in range(v)]
    for j in range(v):
        load = (
            f"_mm512_maskz_loadu_ps(ml, p + {16 * j})"
            if j == v - 1
            else f"_mm512_loadu_ps(p + {16 * j})"
        )
        lines.append(f"    __m512 x{j} = {load};")
    lines.append(f"    const float* wr = w + e * {r};")
    for i in range(r):
        lines.append(f"    {{ __m512 wv = _mm512_set1_ps(wr[{i}]);")
        lines += [f"      a{i}_{j} = _mm512_fmadd_ps(wv, x{j}, a{i}_{j});" for j in range(v)]
        lines.append("    }")
    lines.append("  }")
    lines += [
        f"  _mm512_store_ps(out + {i * 16 * VB + 16 * j}, a{i}_{j});"
        for i in range(r)
        for j in range(v)
    ]
    lines.append("}")
    return "\n".join(lines)


_DRIVER = r"""
int sg_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

static __thread float* ws = 0;
static __thread size_t ws_cap = 0;
static __thread int64_t* ows = 0;
static __thread size_t ows_cap = 0;

static void* grow(void* old, size_t* cap, size_t need) {
  if (need <= *cap) return old;
  free(old);
  void* p = 0;
  if (posix_memalign(&p, 64, need)) p = 0;
  *cap = p ? need : 0;
  return p;
}

/* g: B C H W N kh kw sh sw ph pw dh dw Ho Wo block oph opw inslack
   ent: [E][3] int32 (channel, ky, kx); chunks: [nchunks][5] int64 (ne, eoff, woff, rows, row0)
   y: [B][N][Ho + 2 oph][Wo + 2 opw] (borders written as zeros); res: [B][N][Ho][Wo] or NULL,
   and may be y itself (in-place residual, only without output padding).
   Returns 0, or -1 when memory ran out. */
int sg_dg_conv2d(const float* x, const int64_t* g, const int32_t* ent, int64_t E,
                 const float* wpk, int64_t nchunks, const int64_t* chunks,
                 const int64_t* rowmap, const float* bias, const float* res, float* y,
                 int relu) {
  const int64_t B = g[0], C = g[1], H = g[2], W = g[3], N = g[4];
  const int64_t kh = g[5], kw = g[6], sh = g[7], sw = g[8], ph = g[9], pw = g[10];
  const int64_t dh = g[11], dw = g[12], Ho = g[13], Wo = g[14], pbv = g[15];
  const int64_t oph = g[16], opw = g[17], inslack = g[18];
  const int direct = (sh == 1 && sw == 1 && ph == 0 && pw == 0 && (kh * kw == 1 || inslack));
  const float* src;
  int64_t cs, psq = 0, wq, xs;
  ows = (int64_t*)grow(ows, &ows_cap, sizeof(int64_t) * (E + 16));
  if (!ows) return -1;
  if (direct) {
    src = x; cs = H * W; wq = W; xs = C * cs;
    for (int64_t e = 0; e < E; e++)
      ows[e] = ent[3 * e] * cs + ent[3 * e + 1] * dh * W + ent[3 * e + 2] * dw;
  } else {
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    const int64_t Hq = (Hp + sh - 1) / sh;
    wq = (Wp + sw - 1) / sw;
    psq = ((Hq * wq + kw * dw + 16 + 15) / 16) * 16;
    cs = sh * sw * psq; xs = C * cs;
    unsigned needed = 0;
    for (int64_t e = 0; e < E; e++) {
      int64_t ty = ent[3 * e + 1] * dh, tx = ent[3 * e + 2] * dw;
      int64_t phase = (ty % sh) * sw + (tx % sw);
      needed |= 1u << phase;
      ows[e] = ent[3 * e] * cs + phase * psq + (ty / sh) * wq + tx / sw;
    }
    ws = (float*)grow(ws, &ws_cap, sizeof(float) * (size_t)(B * xs));
    if (!ws) return -1;
    float* dst = ws;
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; bc++) {
      const float* s = x + bc * H * W;
      for (int64_t a = 0; a < sh; a++)
        for (int64_t bb = 0; bb < sw; bb++) {
          int64_t phase = a * sw + bb;
          if (!(needed & (1u << phase))) continue;
          float* d = dst + bc * cs + phase * psq;
          memset(d, 0, sizeof(float) * psq);
          for (int64_t i = 0; i < Hq; i++) {
            int64_t r = sh * i + a - ph;
            if (r < 0 || r >= H) continue;
            float* dr = d + i * wq;
            const float* sr = s + r * W;
            if (sw == 1) {
              memcpy(dr + pw, sr, sizeof(float) * W);
            } else {
              for (int64_t j = 0; j < wq; j++) {
                int64_t c = sw * j + bb - pw;
                if (c >= 0 && c < W) dr[j] = sr[c];
              }
            }
          }
        }
    }
    src = dst;
  }
  for (int64_t e = E; e < E + 16; e++) ows[e] = 0;
  const int64_t* offs = ows;
  const int64_t Hy = Ho + 2 * oph, Wy = Wo + 2 * opw;
  const int64_t yplane = Hy * Wy, rplane = Ho * Wo;
  if (oph > 0) {
#pragma omp parallel for schedule(static)
    for (int64_t bn = 0; bn < B * N; bn++) {
      memset(y + bn * yplane, 0, sizeof(float) * oph * Wy);
      memset(y + bn * yplane + (oph + Ho) * Wy, 0, sizeof(float) * oph * Wy);
    }
  }
  /* positions of the output grid (junk columns included), cut into nearly equal blocks */
  const int64_t L = Ho * wq;
  const int64_t nvt = (L + 15) / 16;
  const int64_t nblk = (nvt + pbv - 1) / pbv;
  const int64_t vbase = nvt / nblk, vextra = nvt % nblk;
  const int64_t items = B * nblk * nchunks;
#pragma omp parallel
  {
    float out[RMAX * PBMAX] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      const int64_t c = it % nchunks, t = it / nchunks;
      const int64_t blk = t % nblk, b = t / nblk;
      const int64_t* ch = chunks + 5 * c;
      const int64_t q0 = 16 * (blk * vbase + (blk < vextra ? blk : vextra));
      int64_t rem = 16 * (vbase + (blk < vextra ? 1 : 0));
      if (rem > L - q0) rem = L - q0;
      const int R = (int)ch[3];
      const int vmax = VMAXR[R - 1];
      const int nv = (int)((rem + 15) / 16);
      const float* xb = src + b * xs + q0;
      for (int v0 = 0; v0 < nv; v0 += vmax) {
        const int V = nv - v0 < vmax ? nv - v0 : vmax;
        int64_t lastn = rem - 16 * (v0 + V - 1);
        if (lastn > 16) lastn = 16;
        const __mmask16 m = (__mmask16)(lastn == 16 ? 0xFFFF : ((1u << lastn) - 1));
        KT[R - 1][V - 1](m, xb + 16 * v0, offs + ch[1], ch[0], wpk + ch[2], out + 16 * v0);
      }
      for (int r = 0; r < R; r++) {
        const int64_t n = rowmap[ch[4] + r];
        const __m512 bv = _mm512_set1_ps(bias ? bias[n] : 0.f);
        float* yr = y + (b * N + n) * yplane + oph * Wy + opw;
        const float* rr = res ? res + (b * N + n) * rplane : 0;
        const float* o = out + r * PBMAX;
        int64_t q = q0;
        const int64_t qe = q0 + rem;
        while (q < qe) {
          const int64_t yy = q / wq;
          int64_t se = yy * wq + Wo;
          if (se > qe) se = qe;
          if (opw > 0) {
            if (q == yy * wq)
              for (int64_t j = 1; j <= opw; j++) yr[yy * Wy - j] = 0.f;
            if (se == yy * wq + Wo)
              for (int64_t j = 0; j < opw; j++) yr[yy * Wy + Wo + j] = 0.f;
          }
          for (int64_t s = q; s < se; s += 16) {
            int64_t cnt = se - s;
            if (cnt > 16) cnt = 16;
            const __mmask16 mm = (__mmask16)(cnt == 16 ? 0xFFFF : ((1u << cnt) - 1));
            const int64_t xx = s - yy * wq;
            __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(mm, o + (s - q0)), bv);
            if (rr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mm, rr + yy * Wo + xx));
            if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
            _mm512_mask_storeu_ps(yr + yy * Wy + xx, mm, v);
          }
          q = (yy + 1) * wq;
        }
      }
    }
  }
  return 0;
}

/* y[p, i, j] = max over the kernel window of x[p] (implicit -inf padding, NaN propagates);
   x: [BC][H][W], y: [BC][Ho][Wo]; every window overlaps the input (PyTorch's rule). */
void sg_max_pool2d(const float* x, float* y, int64_t BC, int64_t H, int64_t W, int64_t kh,
                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t Ho,
                   int64_t Wo) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < BC; p++) {
    const float* xp = x + p * H * W;
    float* yp = y + p * Ho * Wo;
    for (int64_t i = 0; i < Ho; i++) {
      float* yr = yp + i * Wo;
      for (int64_t j = 0; j < Wo; j++) yr[j] = -__builtin_inff();
      for (int64_t a = 0; a < kh; a++) {
        const int64_t r = i * sh - ph + a;
        if (r < 0 || r >= H) continue;
        const float* xr = xp + r * W;
        for (int64_t b = 0; b < kw; b++) {
          /* columns j with 0 <= j * sw - pw + b < W */
          int64_t jlo = pw - b > 0 ? (pw - b + sw - 1) / sw : 0;
          int64_t jhi = (W - 1 + pw - b) / sw + 1;
          if (W - 1 + pw - b < 0) jhi = 0;
          if (jhi > Wo) jhi = Wo;
          const float* xc = xr - pw + b;
          for (int64_t j = jlo; j < jhi; j++) {
            const float v = xc[j * sw], m = yr[j];
            yr[j] = (v > m || v != v) ? v : m;
          }
        }
      }
    }
  }
}
"""


def source() -> str:
    """The complete C source of the kernel library."""
    head = (
        "#include <immintrin.h>\n#include <stdint.h>\n#include <stdlib.h>\n"
        "#include <string.h>\n#include <omp.h>\n"
        f"#define RMAX {RMAX}\n#define VB {VB}\n#define PBMAX (16 * VB)\n"
    )
    kernels = "\n".join(
        _kernel(r, v) for r in range(1, RMAX + 1) for v in range(1, VB + 1) if v <= VMAX_FOR_R[r]
    )
    rows = []
    for r in range(1, RMAX + 1):
        names = [f"k_{r}_{v}" if v <= VMAX_FOR_R[r] else "0" for v in range(1, VB + 1)]
        rows.append("{" + ", ".join(names) + "}")
    table = (
        "typedef void (*kfn)(__mmask16, const float*, const int64_t*, int64_t, const float*, "
        "float*);\n"
        f"static const kfn KT[{RMAX}][{VB}] = {{{', '.join(rows)}}};\n"
        f"static const int VMAXR[{RMAX}] = "
        f"{{{', '.join(str(VMAX_FOR_R[r]) for r in range(1, RMAX + 1))}}};\n"
    )
    return head + kernels + "\n" + table + _DRIVER


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("SGCNN_CACHE") or os.path.join(Path.home(), ".cache", "sgcnn")
    return Path(root) / "kernels"


def _compile(src: str, out: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        c_file = Path(tmp) / "sgcnn_dg.c"
        c_file.write_text(src)
        so_tmp = Path(tmp) / out.name
        cmd = [
            compiler,
            "-O3",
            "-march=native",
            "-fopenmp",
            "-shared",
            "-fPIC",
            str(c_file),
            "-o",
            str(so_tmp),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:500]}")
        os.replace(so_tmp, out)  # atomic: concurrent builders never see half a library


def _load() -> ctypes.CDLL | None:
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        try:
            if os.environ.get("SGCNN_NATIVE", "1") == "0":
                raise RuntimeError("disabled by SGCNN_NATIVE=0")
            if platform.machine().lower() not in ("x86_64", "amd64"):
                raise RuntimeError(f"needs an x86-64 CPU, this is {platform.machine()}")
            src = source()
            key = hashlib.sha256((src + platform.node() + torch.__version__).encode())
            path = _cache_dir() / key.hexdigest()[:16] / "libsgcnn_dg.so"
            if not path.is_file():
                _compile(src, path)
            lib = ctypes.CDLL(str(path))
            if not lib.sg_supported():
                raise RuntimeError("this CPU lacks AVX-512F")
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.sg_dg_conv2d.argtypes = [p, p, p, i64, p, i64, p, p, p, p, p, ctypes.c_int]
            lib.sg_dg_conv2d.restype = ctypes.c_int
            lib.sg_max_pool2d.argtypes = [p, p] + [i64] * 11
            lib.sg_max_pool2d.restype = None
            _lib = lib
        except (OSError, RuntimeError) as err:
            _error = str(err)
        return _lib


def available() -> bool:
    """Whether the native kernel can run here (builds it on first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is false (``None`` when it is true)."""
    _load()
    return _error


def output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _geometry(x_shape, geometry: list[int]) -> tuple[list[int], tuple[int, int, int, int]]:
    """The kernel's geometry vector and the (padded) output shape."""
    n, kh, kw, sh, sw, ph, pw, dh, dw, block, oph, opw, inslack = geometry
    b, c, h, w = x_shape
    ho, wo = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    g = [b, c, h, w, n, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, block, oph, opw, inslack]
    return g, (b, n, ho + 2 * oph, wo + 2 * opw)


def _run(x, entries, weights, chunks, rowmap, bias, residual, geometry, relu, y) -> None:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"sgcnn native kernel unavailable: {_error}")
    g, _ = _geometry(x.shape, geometry)
    g = (ctypes.c_int64 * len(g))(*g)
    status = lib.sg_dg_conv2d(
        _ptr(x),
        g,
        _ptr(entries),
        entries.shape[0],
        _ptr(weights),
        chunks.shape[0],
        _ptr(chunks),
        _ptr(rowmap),
        _ptr(bias),
        _ptr(residual),
        _ptr(y),
        int(relu),
    )
    if status != 0:
        raise MemoryError("sgcnn native kernel: out of memory for its workspace")


def conv2d(
    x: torch.Tensor,
    entries: torch.Tensor,
    weights: torch.Tensor,
    chunks: torch.Tensor,
    rowmap: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    geometry: list[int],
    relu: bool,
) -> torch.Tensor:
    """Diverse group convolution (see the module docstring), float32 NCHW on CPU.

    ``geometry`` = ``[N, kh, kw, sh, sw, ph, pw, dh, dw, block, oph, opw, inslack]``: output
    channels, kernel, stride, padding, dilation, position-block vectors, zero border written
    around each output plane (so the next convolution needs no padded copy) and whether ``x``
    comes from such a producer (storage readable a few floats past its end). ``entries`` int32
    [E, 3] (input channel, ky, kx); ``chunks`` int64 [nchunks, 5] (entries, first entry, first
    weight, filters, first row of ``rowmap``); ``weights`` packed ``[entries, filters]`` per
    chunk; ``rowmap`` the output channel of every packed row.
    """
    x = x.contiguous()
    residual = residual.contiguous() if residual is not None else None
    _, shape = _geometry(x.shape, geometry)
    # 16 floats of slack behind the output: a consumer running the junk columns of its
    # last row may read a few floats past the end of the last plane.
    y = torch.empty(math.prod(shape) + 16, dtype=x.dtype)[: math.prod(shape)].view(shape)
    _run(x, entries, weights, chunks, rowmap, bias, residual, geometry, relu, y)
    return y


def accumulate_(residual, x, entries, weights, chunks, rowmap, bias, geometry, relu) -> None:
    """In place: ``residual <- act(residual + conv2d(x) + bias)``; saves allocating and
    writing a new output when the residual is dead after this layer."""
    if not residual.is_contiguous() or geometry[10] or geometry[11]:
        raise ValueError("in-place accumulation needs a contiguous residual and no padding")
    _run(x.contiguous(), entries, weights, chunks, rowmap, bias, residual, geometry, relu, residual)


# The same two functions as PyTorch custom operators, so that torch.export can trace them
# (and a saved program can call them after `import sgcnn`). Eager calls skip the dispatcher
# (about 30 us a call) and use the functions above directly.


@torch.library.custom_op("sgcnn::dg_conv2d", mutates_args=())
def dg_conv2d(
    x: torch.Tensor,
    entries: torch.Tensor,
    weights: torch.Tensor,
    chunks: torch.Tensor,
    rowmap: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    geometry: list[int],
    relu: bool,
) -> torch.Tensor:
    """:func:`conv2d` as the operator ``sgcnn::dg_conv2d``."""
    return conv2d(x, entries, weights, chunks, rowmap, bias, residual, geometry, relu)


@dg_conv2d.register_fake
def _dg_conv2d_fake(x, entries, weights, chunks, rowmap, bias, residual, geometry, relu):
    _, shape = _geometry(x.shape, geometry)
    return x.new_empty(shape)


@torch.library.custom_op("sgcnn::dg_conv2d_accumulate_", mutates_args=("residual",))
def dg_conv2d_accumulate_(
    residual: torch.Tensor,
    x: torch.Tensor,
    entries: torch.Tensor,
    weights: torch.Tensor,
    chunks: torch.Tensor,
    rowmap: torch.Tensor,
    bias: torch.Tensor,
    geometry: list[int],
    relu: bool,
) -> None:
    """:func:`accumulate_` as the operator ``sgcnn::dg_conv2d_accumulate_``."""
    accumulate_(residual, x, entries, weights, chunks, rowmap, bias, geometry, relu)


@dg_conv2d_accumulate_.register_fake
def _dg_conv2d_accumulate_fake(residual, x, entries, weights, chunks, rowmap, bias, geometry, relu):
    return None


def _flops(x_shape, weights_shape, geometry) -> int:
    """FLOPs (2 per multiply-accumulate) the kernel executes: every packed weight meets every
    output position once (junk columns of the padded grid not counted)."""
    _, (b, _, hy, wy) = _geometry(x_shape, geometry)
    positions = b * (hy - 2 * geometry[10]) * (wy - 2 * geometry[11])
    return 2 * math.prod(weights_shape) * positions


@register_flop_formula(torch.ops.sgcnn.dg_conv2d)
def _dg_conv2d_flops(
    x,
    entries,
    weights,
    chunks,
    rowmap,
    bias,
    residual,
    geometry,
    relu,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    return _flops(x, weights, geometry)


@register_flop_formula(torch.ops.sgcnn.dg_conv2d_accumulate_)
def _dg_conv2d_accumulate_flops(
    residual,
    x,
    entries,
    weights,
    chunks,
    rowmap,
    bias,
    geometry,
    relu,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    return _flops(x, weights, geometry)


def pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (dilation 1)."""
    span = size + 2 * p - k
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside
        out -= 1
    return out


def max_pool2d(
    x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> torch.Tensor:
    """``F.max_pool2d`` for float32 NCHW CPU tensors (dilation 1), one pass over memory."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"sgcnn native kernel unavailable: {_error}")
    x = x.contiguous()
    b, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    y = torch.empty(b, c, ho, wo, dtype=x.dtype)
    lib.sg_max_pool2d(_ptr(x), _ptr(y), b * c, h, w, *kernel, *stride, *padding, ho, wo)
    return y


@torch.library.custom_op("sgcnn::max_pool2d", mutates_args=())
def max_pool2d_op(
    x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> torch.Tensor:
    """:func:`max_pool2d` as the operator ``sgcnn::max_pool2d``."""
    return max_pool2d(x, kernel, stride, padding, ceil_mode)


@max_pool2d_op.register_fake
def _max_pool2d_fake(x, kernel, stride, padding, ceil_mode):
    b, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    return x.new_empty(b, c, ho, wo)
