/* sgcnn native kernels, shared part: the vector ISA (AVX-512F or AVX2 + FMA), the
   register-blocked accumulation kernels, the convolution geometry and thread-local workspaces.
   Included by dg_conv.c and winograd.c (compiled together into one library). */
#ifndef SG_SIMD_H
#define SG_SIMD_H
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define RMAX 16 /* filters per chunk, at most */
/* The accumulation loop prefetches the input run of the entry this many ahead: entries hop
   between panel rows, which the hardware prefetchers do not follow (measured on ResNet-50's
   1x1 layers at batch 16: 15-33% faster on 14x14 and 7x7 inputs). Offset arrays carry
   OFFS_SLACK readable entries past their end. */
#define PF_AHEAD 12
#define OFFS_SLACK 16
_Static_assert(PF_AHEAD <= OFFS_SLACK, "the prefetch reads offsets past the end");

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
/* even[t] = p[2 t], odd[t] = p[2 t + 1] for t < VL */
static inline void v_deinterleave(const float* p, vf* even, vf* odd) {
  const vf a = V_LOAD(p), b = V_LOAD(p + VL);
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  *even = _mm512_permutex2var_ps(a, ie, b);
  *odd = _mm512_permutex2var_ps(a, io, b);
}
/* max(a, b), NaN where either is NaN (max_ps alone returns b when either is) */
static inline vf v_max_nan(vf a, vf b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_max_ps(a, b), a);
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
/* even[t] = p[2 t], odd[t] = p[2 t + 1] for t < VL */
static inline void v_deinterleave(const float* p, vf* even, vf* odd) {
  const vf a = V_LOAD(p), b = V_LOAD(p + VL);
  const __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
  const __m256d o = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD));
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xD8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(o, 0xD8));
}
static inline vf v_max_nan(vf a, vf b) {
  return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}
#else
#error "sgcnn's native kernels need AVX-512F or AVX2 with FMA"
#endif
#define PBMAX (VL * VB)
/* ReLU that keeps NaN, as torch.relu does: max_ps returns its second operand when either is
   NaN, so the value goes second (V_MAX(v, 0) would turn NaN into 0). */
#define V_RELU(v) V_MAX(V_ZERO(), (v))

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
    const char* pf = (const char*)(xb + offs[e + PF_AHEAD]);                        \
    _Pragma("GCC unroll 4") for (int k = 0; k < (V * VL * 4 + 63) / 64; k++)        \
      __builtin_prefetch(pf + 64 * k, 0, 3);                                        \
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
   out[i ostride + VL j ..] = sum_e w[e][i] * xb[offs[e] + VL j .. + VL] (xb readable past the
   block; out and ostride aligned to vectors). */
static inline __attribute__((always_inline)) void kbody(const int R, const int V,
                                                        const float* __restrict xb,
                                                        const int64_t* __restrict offs,
                                                        int64_t ne, const float* __restrict w,
                                                        float* __restrict out, int64_t ostride) {
  SG_ACCUMULATE(acc, R, V, xb, offs, ne, w)
#pragma GCC unroll 16
  for (int i = 0; i < R; i++)
#pragma GCC unroll 16
    for (int j = 0; j < V; j++) V_STOREA(out + i * ostride + VL * j, acc[i][j]);
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
        if (relu) v = V_RELU(v);
        _mm_storeu_ps_any(yi + VL * j, v);
      } else {
        if (ri) v = V_ADD(v, V_LOADM(ml, ri + VL * j));
        if (relu) v = V_RELU(v);
        V_STOREM(yi + VL * j, ml, v);
      }
    }
  }
}

typedef void (*kffn)(const float*, const int64_t*, int64_t, const float*, float* const*,
                     const float* const*, const float*, int64_t, int, int64_t);

typedef void (*kfn)(const float*, const int64_t*, int64_t, const float*, float*, int64_t);
#define K(R, V)                                                                            \
  static void k_##R##_##V(const float* xb, const int64_t* offs, int64_t ne, const float* w, \
                          float* out, int64_t ostride) {                                   \
    kbody(R, V, xb, offs, ne, w, out, ostride);                                            \
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

static __thread float* ws = 0;
static __thread size_t ws_cap = 0;
static __thread int64_t* ows = 0;
static __thread float* ws_panel = 0;
static __thread size_t ws_panel_cap = 0;
static __thread size_t ows_cap = 0;

static inline void* grow(void* old, size_t* cap, size_t need) {
  if (need <= *cap) return old;
  free(old);
  void* p = 0;
  if (posix_memalign(&p, 64, need)) p = 0;
  *cap = p ? need : 0;
  return p;
}

#endif /* SG_SIMD_H */
