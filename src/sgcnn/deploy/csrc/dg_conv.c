/* sgcnn native kernels: diverse group convolution and 2-D max pooling, fp32, NCHW.

   Compiled by sgcnn.deploy._native_build with -O3 -march=native -fopenmp. The vector width follows
   the CPU the library is built for: AVX-512F (16 floats, 32 registers) or AVX2 + FMA
   (8 floats, 16 registers). See sgcnn/deploy/_native.py for the computation. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define RMAX 16 /* filters per chunk, at most */

#if defined(__AVX512F__)
#define ISA "avx512f"
#define VL 16
#define VB 12 /* vectors per position block, at most */
typedef __m512 vf;
typedef __mmask16 vmask;
#define V_ZERO() _mm512_setzero_ps()
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_LOADM(m, p) _mm512_maskz_loadu_ps((m), (p))
#define V_STOREM(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define V_STOREA(p, v) _mm512_store_ps((p), (v))
#define _mm_storeu_ps_any(p, v) _mm512_storeu_ps((p), (v))
#define V_SET1(x) _mm512_set1_ps(x)
#define V_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define V_ADD(a, b) _mm512_add_ps((a), (b))
#define V_MAX(a, b) _mm512_max_ps((a), (b))
static inline vmask v_mask(int64_t n) {
  return (vmask)(n >= 16 ? 0xFFFF : ((1u << n) - 1));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define ISA "avx2"
#define VL 8
#define VB 24
typedef __m256 vf;
typedef __m256i vmask;
#define V_ZERO() _mm256_setzero_ps()
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_LOADM(m, p) _mm256_maskload_ps((p), (m))
#define V_STOREM(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#define V_STOREA(p, v) _mm256_store_ps((p), (v))
#define _mm_storeu_ps_any(p, v) _mm256_storeu_ps((p), (v))
#define V_SET1(x) _mm256_set1_ps(x)
#define V_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define V_ADD(a, b) _mm256_add_ps((a), (b))
#define V_MAX(a, b) _mm256_max_ps((a), (b))
static inline vmask v_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#else
#error "sgcnn's native kernels need AVX-512F or AVX2 with FMA"
#endif
#define PBMAX (VL * VB)

/* The convolution's geometry (mirrored by the ctypes structure in _native_build.py). */
typedef struct {
  int64_t batch, channels, height, width;   /* input x: [batch][channels][height][width] */
  int64_t filters;                          /* output channels */
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;   /* kernel, stride, padding, dilation */
  int64_t out_h, out_w;                     /* output size (without its border) */
  int64_t block;                            /* vectors of VL positions per work item */
  int64_t border_h, border_w;               /* zero border written around each output plane */
  int64_t input_padded;                     /* x carries this layer's zero padding (slack) */
} sg_geometry;

/* acc[i][j] = sum_e w[e][i] * xb[offs[e] + VL j .. + VL] for i < R, j < V: the R x V
   accumulators stay in vector registers (fully unrolled; R and V are constants). */
#define SG_ACCUMULATE(acc, R, V, xb, offs, ne, w)                                  \
  vf acc[RMAX][VB];                                                                \
  _Pragma("GCC unroll 16") for (int i = 0; i < R; i++)                             \
    _Pragma("GCC unroll 16") for (int j = 0; j < V; j++) acc[i][j] = V_ZERO();      \
  for (int64_t e = 0; e < ne; e++) {                                               \
    const float* p = xb + offs[e];                                                 \
    vf x[VB];                                                                      \
    _Pragma("GCC unroll 16") for (int j = 0; j < V; j++) x[j] = V_LOAD(p + VL * j); \
    const float* wr = w + e * R;                                                   \
    _Pragma("GCC unroll 16") for (int i = 0; i < R; i++) {                         \
      const vf wv = V_SET1(wr[i]);                                                 \
      _Pragma("GCC unroll 16") for (int j = 0; j < V; j++)                         \
        acc[i][j] = V_FMA(wv, x[j], acc[i][j]);                                    \
    }                                                                              \
  }

/* k_R_V: accumulate R filters x V vectors over a chunk's entries:
   out[i][j] = sum_e w[e][i] * xb[offs[e] + VL j .. + VL] (xb readable past the block). */
static inline __attribute__((always_inline)) void kbody(const int R, const int V,
                                                        const float* __restrict xb,
                                                        const int64_t* __restrict offs,
                                                        int64_t ne, const float* __restrict w,
                                                        float* __restrict out) {
  SG_ACCUMULATE(acc, R, V, xb, offs, ne, w)
#pragma GCC unroll 16
  for (int i = 0; i < R; i++)
#pragma GCC unroll 16
    for (int j = 0; j < V; j++) V_STOREA(out + i * PBMAX + VL * j, acc[i][j]);
}

/* kf_R_V: the same accumulation, then the epilogue straight from registers, for layers whose
   output rows are the grid's rows (no junk columns, no border):
   y_i[q + VL j] = relu?(acc[i][j] + bias_i + res_i?[q + VL j]) for the first `valid`
   positions of the last vector and all of the others. res_i may be y_i (in-place). */
static inline __attribute__((always_inline)) void kfbody(
    const int R, const int V, const float* __restrict xb, const int64_t* __restrict offs,
    int64_t ne, const float* __restrict w, float* const* yp, const float* const* rp,
    const float* bv, int64_t q, int relu, int64_t valid) {
  SG_ACCUMULATE(acc, R, V, xb, offs, ne, w)
  const vmask ml = v_mask(valid);
#pragma GCC unroll 16
  for (int i = 0; i < R; i++) {
    const vf b = V_SET1(bv[i]);
    float* yi = yp[i] + q;
    const float* ri = rp[i] ? rp[i] + q : 0;
#pragma GCC unroll 16
    for (int j = 0; j < V; j++) {
      vf v = V_ADD(acc[i][j], b);
      if (j < V - 1 || valid >= VL) {
        if (ri) v = V_ADD(v, V_LOAD(ri + VL * j));
        if (relu) v = V_MAX(v, V_ZERO());
        _mm_storeu_ps_any(yi + VL * j, v);
      } else {
        if (ri) v = V_ADD(v, V_LOADM(ml, ri + VL * j));
        if (relu) v = V_MAX(v, V_ZERO());
        V_STOREM(yi + VL * j, ml, v);
      }
    }
  }
}

typedef void (*kffn)(const float*, const int64_t*, int64_t, const float*, float* const*,
                     const float* const*, const float*, int64_t, int, int64_t);

typedef void (*kfn)(const float*, const int64_t*, int64_t, const float*, float*);
#define K(R, V)                                                                            \
  static void k_##R##_##V(const float* xb, const int64_t* offs, int64_t ne, const float* w, \
                          float* out) {                                                    \
    kbody(R, V, xb, offs, ne, w, out);                                                     \
  }                                                                                        \
  static void kf_##R##_##V(const float* xb, const int64_t* offs, int64_t ne, const float* w,\
                           float* const* yp, const float* const* rp, const float* bv,       \
                           int64_t q, int relu, int64_t valid) {                            \
    kfbody(R, V, xb, offs, ne, w, yp, rp, bv, q, relu, valid);                              \
  }
#define D1(R) K(R, 1)
#define D2(R) D1(R) K(R, 2)
#define D3(R) D2(R) K(R, 3)
#define D4(R) D3(R) K(R, 4)
#define D5(R) D4(R) K(R, 5)
#define D6(R) D5(R) K(R, 6)
#define D7(R) D6(R) K(R, 7)
#define D8(R) D7(R) K(R, 8)
#define D9(R) D8(R) K(R, 9)
#define D10(R) D9(R) K(R, 10)
#define D11(R) D10(R) K(R, 11)
#define D12(R) D11(R) K(R, 12)
#define F1(R) kf_##R##_1
#define T1(R) k_##R##_1
#define F2(R) F1(R), kf_##R##_2
#define T2(R) T1(R), k_##R##_2
#define F3(R) F2(R), kf_##R##_3
#define T3(R) T2(R), k_##R##_3
#define F4(R) F3(R), kf_##R##_4
#define T4(R) T3(R), k_##R##_4
#define F5(R) F4(R), kf_##R##_5
#define T5(R) T4(R), k_##R##_5
#define F6(R) F5(R), kf_##R##_6
#define T6(R) T5(R), k_##R##_6
#define F7(R) F6(R), kf_##R##_7
#define T7(R) T6(R), k_##R##_7
#define F8(R) F7(R), kf_##R##_8
#define T8(R) T7(R), k_##R##_8
#define F9(R) F8(R), kf_##R##_9
#define T9(R) T8(R), k_##R##_9
#define F10(R) F9(R), kf_##R##_10
#define T10(R) T9(R), k_##R##_10
#define F11(R) F10(R), kf_##R##_11
#define T11(R) T10(R), k_##R##_11
#define F12(R) F11(R), kf_##R##_12
#define T12(R) T11(R), k_##R##_12

/* Vectors per kernel call for R filters: R * V accumulators + V inputs + 1 weight fit the
   vector registers (few filters: many positions per weight; many filters: one input vector
   feeds R FMAs). */
#if VL == 16
D12(1) D8(2) D6(3) D6(4) D4(5) D4(6) D3(7) D3(8) D3(9) D2(10) D2(11) D2(12) D2(13) D2(14)
D1(15) D1(16)
static const int VMAXR[RMAX] = {12, 8, 6, 6, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1};
static const kfn KT[RMAX][12] = {{T12(1)}, {T8(2)},  {T6(3)},  {T6(4)},  {T4(5)},  {T4(6)},
                                 {T3(7)},  {T3(8)},  {T3(9)},  {T2(10)}, {T2(11)}, {T2(12)},
                                 {T2(13)}, {T2(14)}, {T1(15)}, {T1(16)}};
static const kffn KF[RMAX][12] = {{F12(1)}, {F8(2)},  {F6(3)},  {F6(4)},  {F4(5)},  {F4(6)},
                                  {F3(7)},  {F3(8)},  {F3(9)},  {F2(10)}, {F2(11)}, {F2(12)},
                                  {F2(13)}, {F2(14)}, {F1(15)}, {F1(16)}};
#else
D7(1) D5(2) D3(3) D3(4) D2(5) D2(6) D1(7) D1(8) D1(9) D1(10) D1(11) D1(12) D1(13) D1(14)
D1(15) D1(16)
static const int VMAXR[RMAX] = {7, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const kfn KT[RMAX][12] = {{T7(1)},  {T5(2)},  {T3(3)},  {T3(4)},  {T2(5)},  {T2(6)},
                                 {T1(7)},  {T1(8)},  {T1(9)},  {T1(10)}, {T1(11)}, {T1(12)},
                                 {T1(13)}, {T1(14)}, {T1(15)}, {T1(16)}};
static const kffn KF[RMAX][12] = {{F7(1)},  {F5(2)},  {F3(3)},  {F3(4)},  {F2(5)},  {F2(6)},
                                  {F1(7)},  {F1(8)},  {F1(9)},  {F1(10)}, {F1(11)}, {F1(12)},
                                  {F1(13)}, {F1(14)}, {F1(15)}, {F1(16)}};
#endif

/* 1 when the CPU running this library has the instructions it was compiled for. */
int sg_supported(void) {
  __builtin_cpu_init();
#if VL == 16
  return __builtin_cpu_supports("avx512f");
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

const char* sg_isa(void) { return ISA; }
int64_t sg_lanes(void) { return VL; }
int64_t sg_max_block(void) { return VB; }
int64_t sg_max_rows(void) { return RMAX; }
int64_t sg_geometry_size(void) { return (int64_t)sizeof(sg_geometry); }

static __thread float* ws = 0;
static __thread size_t ws_cap = 0;
static __thread int64_t* ows = 0;
static __thread float* ws_panel = 0;
static __thread size_t ws_panel_cap = 0;
static __thread size_t ows_cap = 0;

static void* grow(void* old, size_t* cap, size_t need) {
  if (need <= *cap) return old;
  free(old);
  void* p = 0;
  if (posix_memalign(&p, 64, need)) p = 0;
  *cap = p ? need : 0;
  return p;
}

/* y[b, n, q] = relu?(bias[n] + res?[b, n, q] + sum_{e in E_j} w[n, e] * src[b, off_e + q])
   ent: [E][3] int32 (channel, ky, kx); chunks: [nchunks][5] int64 (ne, eoff, woff, rows, row0)
   y: [B][N][Ho + 2 oph][Wo + 2 opw] (borders written as zeros); res: [B][N][Ho][Wo] or NULL,
   and may be y itself (in-place residual, only without output border).
   Returns 0, or -1 when memory ran out. */
int sg_dg_conv2d(const float* x, const sg_geometry* geo, const int32_t* ent, int64_t E,
                 const float* wpk, int64_t nchunks, const int64_t* chunks,
                 const int64_t* rowmap, const float* bias, const float* res, float* y,
                 int relu) {
  const int64_t B = geo->batch, C = geo->channels, H = geo->height, W = geo->width;
  const int64_t N = geo->filters, kh = geo->kh, kw = geo->kw, sh = geo->sh, sw = geo->sw;
  const int64_t ph = geo->ph, pw = geo->pw, dh = geo->dh, dw = geo->dw;
  const int64_t Ho = geo->out_h, Wo = geo->out_w, pbv = geo->block;
  const int64_t oph = geo->border_h, opw = geo->border_w, inslack = geo->input_padded;
  if (pbv < 1 || pbv > VB) return -2;
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
  /* Entry e reads the run src[b * xs + rowbase_e + shift_e + q] over a block's positions q.
     Its "row" (channel, phase) is packed per block into a contiguous panel (row pitch
     `pitch`), so that the kernel streams one small, TLB-friendly buffer instead of hundreds
     of planes a page apart. */
  const int64_t nph = direct ? 1 : sh * sw, nrows = C * nph;
  int64_t maxshift = 0;
  for (int64_t e = 0; e < E; e++) {
    const int64_t phase = direct ? 0 : (ows[e] % cs) / psq;
    const int64_t rowbase = ent[3 * e] * cs + phase * psq;
    const int64_t shift = ows[e] - rowbase;
    if (shift > maxshift) maxshift = shift;
    ows[e] = (ent[3 * e] * nph + phase) << 24 | shift; /* row, shift; re-based below */
  }
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
  const int64_t nvt = (L + VL - 1) / VL;
  const int64_t nblk = (nvt + pbv - 1) / pbv;
  const int64_t vbase = nvt / nblk, vextra = nvt % nblk;
  const int64_t span = VL * (vbase + 1) + maxshift + VL;
  int64_t pitch = (span + 15) / 16 * 16;
  if (pitch % 256 == 0) pitch += 16; /* rows a multiple of 1 KiB apart alias in L1 */
  /* rows some entry reads, and the panel offsets of the entries */
  unsigned char* used = (unsigned char*)calloc((size_t)nrows, 1);
  if (!used) return -1;
  for (int64_t e = 0; e < E; e++) {
    const int64_t row = ows[e] >> 24, shift = ows[e] & ((1 << 24) - 1);
    used[row] = 1;
    ows[e] = row * pitch + shift;
  }
  for (int64_t e = E; e < E + 16; e++) ows[e] = 0;
  const int64_t* offs = ows;
  const int64_t srclen = B * xs; /* floats readable from src */
  /* work items: (image, block, share of the chunks); enough of them to keep threads busy */
  const int64_t threads = omp_get_max_threads();
  int64_t nsplit = (3 * threads + B * nblk - 1) / (B * nblk);
  if (nsplit > nchunks) nsplit = nchunks;
  if (nsplit < 1) nsplit = 1;
  const int64_t items = B * nblk * nsplit;
  /* output rows are the grid's rows: the kernel writes y directly */
  const int rows_are_grid = (wq == Wo && oph == 0 && opw == 0);
  int failed = 0;
#pragma omp parallel
  {
    float out[RMAX * PBMAX] __attribute__((aligned(64)));
    float* panel = (float*)grow(ws_panel, &ws_panel_cap, sizeof(float) * (size_t)(nrows * pitch));
    ws_panel = panel;
    if (!panel) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      if (!panel) continue;
      const int64_t part = it % nsplit, t = it / nsplit;
      const int64_t blk = t % nblk, b = t / nblk;
      const int64_t q0 = VL * (blk * vbase + (blk < vextra ? blk : vextra));
      int64_t rem = VL * (vbase + (blk < vextra ? 1 : 0));
      if (rem > L - q0) rem = L - q0;
      const int64_t len = rem + maxshift + VL;
      for (int64_t row = 0; row < nrows; row++) {
        if (!used[row]) continue;
        const int64_t start = b * xs + (row / nph) * cs + (row % nph) * psq + q0;
        int64_t n = len;
        if (start + n > srclen) n = srclen - start;
        memcpy(panel + row * pitch, src + start, sizeof(float) * n);
        if (n < len) memset(panel + row * pitch + n, 0, sizeof(float) * (len - n));
      }
      const int nv = (int)((rem + VL - 1) / VL);
      const int64_t c0 = nchunks * part / nsplit, c1 = nchunks * (part + 1) / nsplit;
      for (int64_t c = c0; c < c1; c++) {
        const int64_t* ch = chunks + 5 * c;
        const int R = (int)ch[3];
        const int vmax = VMAXR[R - 1];
        if (rows_are_grid) {
          float* yp[RMAX];
          const float* rp[RMAX];
          float bv[RMAX];
          for (int r = 0; r < R; r++) {
            const int64_t n = rowmap[ch[4] + r];
            yp[r] = y + (b * N + n) * yplane;
            rp[r] = res ? res + (b * N + n) * rplane : 0;
            bv[r] = bias ? bias[n] : 0.f;
          }
          for (int v0 = 0; v0 < nv; v0 += vmax) {
            const int V = nv - v0 < vmax ? nv - v0 : vmax;
            KF[R - 1][V - 1](panel + VL * v0, offs + ch[1], ch[0], wpk + ch[2], yp, rp, bv,
                             q0 + VL * v0, relu, rem - VL * (v0 + V - 1));
          }
          continue;
        }
        for (int v0 = 0; v0 < nv; v0 += vmax) {
          const int V = nv - v0 < vmax ? nv - v0 : vmax;
          KT[R - 1][V - 1](panel + VL * v0, offs + ch[1], ch[0], wpk + ch[2], out + VL * v0);
        }
        for (int r = 0; r < R; r++) {
          const int64_t n = rowmap[ch[4] + r];
          const vf bv = V_SET1(bias ? bias[n] : 0.f);
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
            for (int64_t s = q; s < se; s += VL) {
              const vmask mm = v_mask(se - s);
              const int64_t xx = s - yy * wq;
              vf v = V_ADD(V_LOADM(mm, o + (s - q0)), bv);
              if (rr) v = V_ADD(v, V_LOADM(mm, rr + yy * Wo + xx));
              if (relu) v = V_MAX(v, V_ZERO());
              V_STOREM(yr + yy * Wy + xx, mm, v);
            }
            q = (yy + 1) * wq;
          }
        }
      }
    }
  }
  free(used);
  return failed ? -1 : 0;
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
