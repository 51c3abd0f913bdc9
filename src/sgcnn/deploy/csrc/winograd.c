/* sgcnn native kernels: diverse group convolution of 3x3 stride-1 layers by Winograd's
   minimal filtering F(m x m, 3x3), m = 2 or 4, fp32, NCHW. See sgcnn/deploy/_fast_winograd.py.

   Per m x m output tile and filter n of group j (kept input channels C_j):

       Y = A^T [ sum_{c in C_j} U[n, c] .* (B^T d_c B) ] A,    U[n, c] = G w[n, c] G^T

   d_c the tile's (m + 2) x (m + 2) input patch of channel c (zero padding included). The
   (m + 2)^2 element-wise sums are as many small matrix products, one per transform point xi,
   run by the same register-blocked kernels as sg_dg_conv2d: (m + 2)^2 / m^2 multiply-adds per
   output and kept (filter, channel) pair, against 9 for the direct convolution (F(2x2, 3x3):
   4, 2.25x fewer; F(4x4, 3x3): 2.25, 4x fewer). */
#include "sg_simd.h"

#if VL == 16
#define V_SUB(a, b) _mm512_sub_ps((a), (b))
#define V_MUL(a, s) _mm512_mul_ps((a), V_SET1(s))
/* lo = (a0 b0 a1 b1 ...), hi = the rest: a and b interleaved over 2 VL floats */
static inline void v_interleave(vf a, vf b, vf* lo, vf* hi) {
  const __m512i i0 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15,
                                       31);
  *lo = _mm512_permutex2var_ps(a, i0, b);
  *hi = _mm512_permutex2var_ps(a, i1, b);
}
/* 4x4 transposes within each 128-bit lane of a, b, c, d */
static inline void v_transpose4(vf* a, vf* b, vf* c, vf* d) {
  const vf t0 = _mm512_unpacklo_ps(*a, *b), t1 = _mm512_unpackhi_ps(*a, *b);
  const vf t2 = _mm512_unpacklo_ps(*c, *d), t3 = _mm512_unpackhi_ps(*c, *d);
  *a = _mm512_shuffle_ps(t0, t2, 0x44);
  *b = _mm512_shuffle_ps(t0, t2, 0xEE);
  *c = _mm512_shuffle_ps(t1, t3, 0x44);
  *d = _mm512_shuffle_ps(t1, t3, 0xEE);
}
/* lane i of the result = tile i, from the transposes' order (tile i at lane 4 (i % 4) + i / 4) */
static inline vf v_from_lanes(vf v) {
  const __m512i i = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(i, v);
}
static inline vf v_to_lanes(vf v) { return v_from_lanes(v); } /* the permutation is an involution */
#else
#define V_SUB(a, b) _mm256_sub_ps((a), (b))
#define V_MUL(a, s) _mm256_mul_ps((a), V_SET1(s))
static inline void v_interleave(vf a, vf b, vf* lo, vf* hi) {
  const vf l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
  *lo = _mm256_permute2f128_ps(l, h, 0x20);
  *hi = _mm256_permute2f128_ps(l, h, 0x31);
}
static inline void v_transpose4(vf* a, vf* b, vf* c, vf* d) {
  const vf t0 = _mm256_unpacklo_ps(*a, *b), t1 = _mm256_unpackhi_ps(*a, *b);
  const vf t2 = _mm256_unpacklo_ps(*c, *d), t3 = _mm256_unpackhi_ps(*c, *d);
  *a = _mm256_shuffle_ps(t0, t2, 0x44);
  *b = _mm256_shuffle_ps(t0, t2, 0xEE);
  *c = _mm256_shuffle_ps(t1, t3, 0x44);
  *d = _mm256_shuffle_ps(t1, t3, 0xEE);
}
/* after the transposes tile i sits at lane (i % 2) * 4 + i / 2 */
static inline vf v_from_lanes(vf v) {
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
static inline vf v_to_lanes(vf v) {
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}
#endif

/* v + res?, ReLU?, to the first n floats of p (masked stores are slow on some CPUs: only
   a partial vector uses them) */
static inline void store_part(float* p, const float* r, vf v, int64_t n, int relu) {
  if (n >= VL) {
    if (r) v = V_ADD(v, V_LOAD(r));
    if (relu) v = V_RELU(v);
    _mm_storeu_ps_any(p, v);
  } else {
    const vmask m = v_mask(n);
    if (r) v = V_ADD(v, V_LOADM(m, r));
    if (relu) v = V_RELU(v);
    V_STOREM(p, m, v);
  }
}

/* n floats (n <= 2 VL) of an output row: relu?(lo|hi + res?) */
static inline void store_row(float* yr, const float* rr, vf lo, vf hi, int64_t n, int relu) {
  store_part(yr, rr, lo, n, relu);
  if (n > VL) store_part(yr + VL, rr ? rr + VL : 0, hi, n - VL, relu);
}

/* V = B^T d B for VL consecutive tiles of one tile row (rows: the 4 input rows of the tile
   row, at the first tile's column); the 16 results go to out + xi * xistride, the first
   `n` lanes only. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. */
static inline void input_transform2(const float* const* rows, int64_t col, float* out,
                                   int64_t xistride, int64_t n) {
  vf d[4][4], t[4][4];
#pragma GCC unroll 4
  for (int a = 0; a < 4; a++) {
    v_deinterleave(rows[a] + col, &d[a][0], &d[a][1]);
    v_deinterleave(rows[a] + col + 2, &d[a][2], &d[a][3]);
  }
#pragma GCC unroll 4
  for (int l = 0; l < 4; l++) {
    t[0][l] = V_SUB(d[0][l], d[2][l]);
    t[1][l] = V_ADD(d[1][l], d[2][l]);
    t[2][l] = V_SUB(d[2][l], d[1][l]);
    t[3][l] = V_SUB(d[1][l], d[3][l]);
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; k++) {
    float* q = out + 4 * k * xistride;
    store_part(q, 0, V_SUB(t[k][0], t[k][2]), n, 0);
    store_part(q + xistride, 0, V_ADD(t[k][1], t[k][2]), n, 0);
    store_part(q + 2 * xistride, 0, V_SUB(t[k][2], t[k][1]), n, 0);
    store_part(q + 3 * xistride, 0, V_SUB(t[k][1], t[k][3]), n, 0);
  }
}

/* The 2x2 outputs Y = A^T M A of VL tiles (M: 16 vectors, m + xi * mstride), A^T = [1 1 1 0;
   0 1 -1 -1]; y00..y11 (row, column) with the bias added. */
static inline void output_transform2(const float* m, int64_t mstride, vf bias, vf* y00,
                                    vf* y01, vf* y10, vf* y11) {
  vf p0[4], p1[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; k++) {
    const float* mk = m + 4 * k * mstride;
    const vf m0 = V_LOAD(mk), m1 = V_LOAD(mk + mstride);
    const vf m2 = V_LOAD(mk + 2 * mstride), m3 = V_LOAD(mk + 3 * mstride);
    p0[k] = V_ADD(V_ADD(m0, m1), m2);
    p1[k] = V_SUB(V_SUB(m1, m2), m3);
  }
  *y00 = V_ADD(V_ADD(V_ADD(p0[0], p0[1]), p0[2]), bias);
  *y10 = V_ADD(V_SUB(V_SUB(p0[1], p0[2]), p0[3]), bias);
  *y01 = V_ADD(V_ADD(V_ADD(p1[0], p1[1]), p1[2]), bias);
  *y11 = V_ADD(V_SUB(V_SUB(p1[1], p1[2]), p1[3]), bias);
}

/* ---- F(4x4, 3x3): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
   0 2 -1 -2 1 0; 0 4 0 -5 0 1], A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0;
   0 1 -1 8 -8 1], G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6;
   1/24 -1/12 1/6; 0 0 1] */

/* t = B^T d over 6 vectors */
static inline void bt6(const vf* d, vf* t) {
  const vf four = V_SET1(4.f), two = V_SET1(2.f);
  t[0] = V_ADD(V_FMA(four, d[0], d[4]), V_MUL(d[2], -5.f));
  t[1] = V_SUB(V_ADD(d[3], d[4]), V_FMA(four, d[1], V_MUL(d[2], 4.f)));
  t[2] = V_ADD(V_SUB(d[4], d[3]), V_MUL(V_SUB(d[1], d[2]), 4.f));
  t[3] = V_FMA(two, V_SUB(d[3], d[1]), V_SUB(d[4], d[2]));
  t[4] = V_SUB(V_SUB(d[4], d[2]), V_MUL(V_SUB(d[3], d[1]), 2.f));
  t[5] = V_SUB(V_FMA(four, d[1], d[5]), V_MUL(d[3], 5.f));
}

/* y = A^T m over 6 vectors */
static inline void at6(const vf* m, vf* y) {
  const vf s12 = V_ADD(m[1], m[2]), d12 = V_SUB(m[1], m[2]);
  const vf s34 = V_ADD(m[3], m[4]), d34 = V_SUB(m[3], m[4]);
  y[0] = V_ADD(V_ADD(m[0], s12), s34);
  y[1] = V_FMA(V_SET1(2.f), d34, d12);
  y[2] = V_FMA(V_SET1(4.f), s34, s12);
  y[3] = V_ADD(V_FMA(V_SET1(8.f), d34, d12), m[5]);
}

/* c[k] = row[4 t + k] for the VL tiles t from col / 4 on (k < 6), tiles in lane order */
static inline void columns6(const float* row, vf* c) {
  vf a = V_LOAD(row), b = V_LOAD(row + VL), e = V_LOAD(row + 2 * VL), f = V_LOAD(row + 3 * VL);
  v_transpose4(&a, &b, &e, &f);
  c[0] = v_from_lanes(a);
  c[1] = v_from_lanes(b);
  c[2] = v_from_lanes(e);
  c[3] = v_from_lanes(f);
  a = V_LOAD(row + 4), b = V_LOAD(row + 4 + VL), e = V_LOAD(row + 4 + 2 * VL);
  f = V_LOAD(row + 4 + 3 * VL);
  v_transpose4(&a, &b, &e, &f);
  c[4] = v_from_lanes(a);
  c[5] = v_from_lanes(b);
}

/* V = B^T d B of VL consecutive tiles of one tile row (6 input rows), the 36 results to
   out + xi * xistride, first n lanes only */
static inline void input_transform4(const float* const* rows, int64_t col, float* out,
                                    int64_t xistride, int64_t n) {
  vf u[6][6];
#pragma GCC unroll 6
  for (int a = 0; a < 6; a++) { /* across the row: u[a] = d[a] B */
    vf c[6];
    columns6(rows[a] + col, c);
    bt6(c, u[a]);
  }
#pragma GCC unroll 6
  for (int l = 0; l < 6; l++) { /* down the columns: V[., l] = B^T u[., l] */
    vf d[6], t[6];
#pragma GCC unroll 6
    for (int a = 0; a < 6; a++) d[a] = u[a][l];
    bt6(d, t);
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++) store_part(out + (6 * k + l) * xistride, 0, t[k], n, 0);
  }
}

/* The 4x4 outputs A^T M A (+ bias, + residual, ReLU) of VL tiles of tile row ti, tiles from
   column j: rows 4 ti + a < rows_valid, n_out floats of each row. */
static inline void output_transform4(const float* m, int64_t mstride, vf bias, float* yb,
                                     const float* rb, int64_t Wy, int64_t Wo, int64_t q,
                                     int64_t qr, int64_t rows_valid, int64_t n_out, int relu) {
  vf p[6][4];
#pragma GCC unroll 6
  for (int k = 0; k < 6; k++) { /* across: p[k] = M[k] A */
    vf mk[6];
#pragma GCC unroll 6
    for (int l = 0; l < 6; l++) mk[l] = V_LOAD(m + (6 * k + l) * mstride);
    at6(mk, p[k]);
  }
  vf yv[4][4];
#pragma GCC unroll 4
  for (int b = 0; b < 4; b++) { /* down: Y[., b] = A^T p[., b] */
    vf col[6], out[4];
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++) col[k] = p[k][b];
    at6(col, out);
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++) yv[a][b] = v_to_lanes(V_ADD(out[a], bias));
  }
  for (int a = 0; a < 4 && a < rows_valid; a++) {
    vf r0 = yv[a][0], r1 = yv[a][1], r2 = yv[a][2], r3 = yv[a][3];
    v_transpose4(&r0, &r1, &r2, &r3); /* r0: the 4 columns of tiles 0, 1 (AVX2) ... */
    float* yr = yb + q + a * Wy;
    const float* rr = rb ? rb + qr + a * Wo : 0;
    const vf parts[4] = {r0, r1, r2, r3};
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
      if (n_out > k * VL) store_part(yr + k * VL, rr ? rr + k * VL : 0, parts[k], n_out - k * VL, relu);
  }
}

/* The run of tiles from s0 (of one image's tile row) within [s0, t1): tiles are numbered
   over the batch, image by image, row by row (ntiles per image, tw per tile row). */
typedef struct {
  int64_t b, ti, ja, jb; /* image, tile row, first and past-the-last tile column */
} segment;
static inline segment segment_at(int64_t s0, int64_t t1, int64_t ntiles, int64_t tw) {
  segment g;
  g.b = s0 / ntiles;
  const int64_t local = s0 - g.b * ntiles, end = t1 - g.b * ntiles;
  g.ti = local / tw;
  g.ja = local - g.ti * tw;
  g.jb = (g.ti + 1) * tw < end ? tw : end - g.ti * tw;
  return g;
}

/* The kernel for tile size m (2 or 4, a constant in each instance): see sg_wino_conv2d. */
static inline __attribute__((always_inline)) int wino_run(
    const int m, const float* x, const sg_geometry* geo, const int32_t* chan, int64_t E,
    const float* upk, int64_t nchunks, const int64_t* chunks, const int64_t* rowmap,
    const float* bias, const float* res, float* y, int relu) {
  const int alpha = m + 2, npts = alpha * alpha; /* input tile size, transform points */
  const int64_t B = geo->batch, C = geo->channels, H = geo->height, W = geo->width;
  const int64_t N = geo->filters, ph = geo->ph, pw = geo->pw, pbv = geo->block;
  const int64_t oph = geo->border_h, opw = geo->border_w;
  if (pbv < 1 || pbv > VB) return -2;
  if (geo->kh != 3 || geo->kw != 3 || geo->sh != 1 || geo->sw != 1 || geo->dh != 1 ||
      geo->dw != 1 || nchunks < 1)
    return -3;
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, plane = Hp * Wp;
  const int64_t Ho = Hp - 2, Wo = Wp - 2;
  if (Ho < 1 || Wo < 1 || Ho != geo->out_h || Wo != geo->out_w) return -3;
  const int64_t th = (Ho + m - 1) / m, tw = (Wo + m - 1) / m, ntiles = th * tw;
  /* the zero-padded input: x itself when it carries the padding (and SLACK floats after it,
     read by the last tiles' loads), else a padded copy, also of an unpadded layer's input,
     whose memory ends with it. Reads past a row's end or below the last row (the last row
     again) only feed outputs that are dropped, or (m = 4) enter them multiplied by
     coefficients that cancel: they must be finite, and are. */
  const float* xp = x;
  if (ph || pw || !geo->input_padded) {
    ws = (float*)grow(ws, &ws_cap, sizeof(float) * (size_t)(B * C * plane + 4 * VL + 8));
    if (!ws) return -1;
    float* dst = ws;
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; bc++) {
      const float* s = x + bc * H * W;
      float* d = dst + bc * plane;
      memset(d, 0, sizeof(float) * ph * Wp);
      for (int64_t r = 0; r < H; r++) {
        float* dr = d + (r + ph) * Wp;
        memset(dr, 0, sizeof(float) * pw);
        memcpy(dr + pw, s + r * W, sizeof(float) * W);
        memset(dr + pw + W, 0, sizeof(float) * pw);
      }
      memset(d + (ph + H) * Wp, 0, sizeof(float) * ph * Wp);
    }
    memset(dst + B * C * plane, 0, sizeof(float) * (4 * VL + 8));
    xp = dst;
  }
  /* work items: (block of T tiles of the batch, share of the chunks) */
  const int64_t T = VL * pbv;
  const int64_t nblk = (B * ntiles + T - 1) / T;
  const int64_t nrows = chunks[5 * (nchunks - 1) + 4] + chunks[5 * (nchunks - 1) + 3];
  int64_t xistride = C * T, mstride = nrows * T; /* floats between two transform points */
  if (xistride % 1024 == 0) xistride += 16;      /* 4 KiB apart: the same L1 sets */
  if (mstride % 1024 == 0) mstride += 16;
  unsigned char* used = (unsigned char*)calloc((size_t)C, 1);
  ows = (int64_t*)grow(ows, &ows_cap, sizeof(int64_t) * (E + OFFS_SLACK));
  if (!used || !ows) {
    free(used);
    return -1;
  }
  for (int64_t e = 0; e < E; e++) {
    used[chan[e]] = 1;
    ows[e] = chan[e] * T;
  }
  for (int64_t e = E; e < E + OFFS_SLACK; e++) ows[e] = 0;
  const int64_t* offs = ows;
  const int64_t threads = omp_get_max_threads();
  int64_t nsplit = (3 * threads + nblk - 1) / nblk;
  if (nsplit > nchunks) nsplit = nchunks;
  if (nsplit < 1) nsplit = 1;
  const int64_t items = nblk * nsplit;
  const int64_t Hy = Ho + 2 * oph, Wy = Wo + 2 * opw, yplane = Hy * Wy, rplane = Ho * Wo;
  int failed = 0;
#pragma omp parallel
  {
    /* V: [npts][C][T] (xi, channel, tile), then M: [npts][rows][T] (xi, filter, tile) */
    float* panel = (float*)grow(ws_panel, &ws_panel_cap,
                                sizeof(float) * (size_t)(npts * (xistride + mstride) + 16));
    ws_panel = panel;
    if (!panel) {
#pragma omp atomic write
      failed = 1;
    }
    float* mb = panel ? panel + npts * xistride : 0;
    int64_t held = -1; /* the block whose transformed inputs this thread's panel holds */
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      if (!panel) continue;
      const int64_t part = it % nsplit, blk = it / nsplit;
      const int64_t t0 = blk * T, t1 = t0 + T < B * ntiles ? t0 + T : B * ntiles;
      /* the block's tiles, tile row by tile row: V of every channel some group keeps; not
         again when this thread's previous item was another share of the same block (small
         batches: measured at batch 1, 1.5x / 2x faster on ResNet-50's 14x14 / 7x7 layers) */
      for (int64_t c = 0; c < C && blk != held; c++) {
        if (!used[c]) continue;
        for (int64_t s0 = t0; s0 < t1;) {
          const segment g = segment_at(s0, t1, ntiles, tw);
          const float* xc = xp + (g.b * C + c) * plane;
          const float* rows[6];
          for (int a = 0; a < alpha; a++)
            rows[a] = xc + (m * g.ti + a < Hp ? m * g.ti + a : Hp - 1) * Wp;
          float* out = panel + c * T + (s0 - t0);
          for (int64_t j = g.ja; j < g.jb; j += VL) {
            if (m == 2)
              input_transform2(rows, 2 * j, out + (j - g.ja), xistride, g.jb - j);
            else
              input_transform4(rows, 4 * j, out + (j - g.ja), xistride, g.jb - j);
          }
          s0 += g.jb - g.ja;
        }
      }
      held = blk;
      /* M[xi] = U[xi] V[xi], transform point by transform point (its V stays in L1) */
      const int nv = (int)((t1 - t0 + VL - 1) / VL);
      const int64_t c0 = nchunks * part / nsplit, c1 = nchunks * (part + 1) / nsplit;
      for (int xi = 0; xi < npts; xi++)
        for (int64_t ci = c0; ci < c1; ci++) {
          const int64_t* ch = chunks + 5 * ci;
          const int64_t ne = ch[0];
          const int R = (int)ch[3], vmax = VMAXR[R - 1];
          for (int v0 = 0; v0 < nv; v0 += vmax) {
            const int V = nv - v0 < vmax ? nv - v0 : vmax;
            KT[R - 1][V - 1](panel + xi * xistride + VL * v0, offs + ch[1], ne,
                             upk + ch[2] + xi * ne * R, mb + xi * mstride + ch[4] * T + VL * v0,
                             T);
          }
        }
      /* Y = A^T M A with bias, residual and ReLU, written tile row by tile row */
      const int64_t r0 = chunks[5 * c0 + 4], r1 = chunks[5 * (c1 - 1) + 4] + chunks[5 * (c1 - 1) + 3];
      for (int64_t row = r0; row < r1; row++) {
        const int64_t n = rowmap[row];
        const vf bv = V_SET1(bias ? bias[n] : 0.f);
        for (int64_t s0 = t0; s0 < t1;) {
          const segment g = segment_at(s0, t1, ntiles, tw);
          const int64_t ti = g.ti, ja = g.ja, jb = g.jb;
          float* yb = y + (g.b * N + n) * yplane + oph * Wy + opw;
          const float* rb = res ? res + (g.b * N + n) * rplane : 0;
          const float* mt = mb + row * T + (s0 - t0);
          for (int64_t j = ja; j < jb; j += VL, mt += VL) {
            const int64_t tiles = jb - j < VL ? jb - j : VL;
            const int64_t n_out = m * (j + tiles) > Wo ? Wo - m * j : m * tiles;
            const int64_t q = m * ti * Wy + m * j, qr = m * ti * Wo + m * j;
            if (m == 4) {
              output_transform4(mt, mstride, bv, yb, rb, Wy, Wo, q, qr, Ho - 4 * ti, n_out, relu);
              continue;
            }
            vf y00, y01, y10, y11, lo, hi;
            output_transform2(mt, mstride, bv, &y00, &y01, &y10, &y11);
            v_interleave(y00, y01, &lo, &hi);
            store_row(yb + q, rb ? rb + qr : 0, lo, hi, n_out, relu);
            if (2 * ti + 1 < Ho) {
              v_interleave(y10, y11, &lo, &hi);
              store_row(yb + q + Wy, rb ? rb + qr + Wo : 0, lo, hi, n_out, relu);
            }
          }
          /* the zero border around the output plane, written by the tiles at its edges */
          for (int64_t a = 0; opw > 0 && a < m && m * ti + a < Ho; a++) {
            float* yr = yb + (m * ti + a) * Wy;
            if (ja == 0)
              for (int64_t k = 1; k <= opw; k++) yr[-k] = 0.f;
            if (jb == tw)
              for (int64_t k = 0; k < opw; k++) yr[Wo + k] = 0.f;
          }
          if (oph > 0 && ti == 0 && ja == 0) memset(yb - oph * Wy - opw, 0, sizeof(float) * oph * Wy);
          if (oph > 0 && ti == th - 1 && jb == tw)
            memset(yb + Ho * Wy - opw, 0, sizeof(float) * oph * Wy);
          s0 += jb - ja;
        }
      }
    }
  }
  free(used);
  return failed ? -1 : 0;
}

/* y[b, n] = relu?(bias[n] + res?[b, n] + conv3x3(x)[b, n]) by F(tile x tile, 3x3), tile 2 or
   4, stride 1, dilation 1, any zero padding. chan: [E] int32, the groups' kept channels, group
   after group; upk: per chunk, U packed [(tile + 2)^2][channels][filters]; chunks [nchunks][5]
   (channels, first channel entry, first weight, filters, first row of rowmap). geo->block:
   vectors of VL tiles per work item (its tiles may span images). y, res and borders as in
   sg_dg_conv2d. Returns 0, -1 when memory ran out, -2 for a bad block, -3 for a geometry or
   tile size this kernel does not compute. */
int sg_wino_conv2d(const float* x, const sg_geometry* geo, const int32_t* chan, int64_t E,
                   const float* upk, int64_t nchunks, const int64_t* chunks,
                   const int64_t* rowmap, const float* bias, const float* res, float* y,
                   int relu, int tile) {
  if (tile == 2)
    return wino_run(2, x, geo, chan, E, upk, nchunks, chunks, rowmap, bias, res, y, relu);
  if (tile == 4)
    return wino_run(4, x, geo, chan, E, upk, nchunks, chunks, rowmap, bias, res, y, relu);
  return -3;
}
