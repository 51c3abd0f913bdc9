/* sgcnn native kernels: diverse group convolution of 3x3 stride-1 layers by Winograd's
   minimal filtering F(2x2, 3x3), fp32, NCHW. See sgcnn/deploy/_winograd.py for the method.

   Per 2x2 output tile and filter n of group j (kept input channels C_j):

       Y = A^T [ sum_{c in C_j} U[n, c] .* (B^T d_c B) ] A,    U[n, c] = G w[n, c] G^T

   d_c the tile's 4x4 input patch of channel c (zero padding included). The 16 element-wise
   sums are 16 small matrix products, one per transform point xi, run by the same
   register-blocked kernels as sg_dg_conv2d: 16 * |C_j| multiply-adds per filter and tile,
   against 36 * |C_j| for the direct convolution (2.25x fewer). */
#include "sg_simd.h"

#if VL == 16
#define V_SUB(a, b) _mm512_sub_ps((a), (b))
/* even[t] = p[2 t], odd[t] = p[2 t + 1] for t < VL */
static inline void v_deinterleave(const float* p, vf* even, vf* odd) {
  const vf a = V_LOAD(p), b = V_LOAD(p + VL);
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  *even = _mm512_permutex2var_ps(a, ie, b);
  *odd = _mm512_permutex2var_ps(a, io, b);
}
/* lo = (a0 b0 a1 b1 ...), hi = the rest: a and b interleaved over 2 VL floats */
static inline void v_interleave(vf a, vf b, vf* lo, vf* hi) {
  const __m512i i0 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15,
                                       31);
  *lo = _mm512_permutex2var_ps(a, i0, b);
  *hi = _mm512_permutex2var_ps(a, i1, b);
}
#else
#define V_SUB(a, b) _mm256_sub_ps((a), (b))
static inline void v_deinterleave(const float* p, vf* even, vf* odd) {
  const vf a = V_LOAD(p), b = V_LOAD(p + VL);
  const __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
  const __m256d o = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD));
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xD8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(o, 0xD8));
}
static inline void v_interleave(vf a, vf b, vf* lo, vf* hi) {
  const vf l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
  *lo = _mm256_permute2f128_ps(l, h, 0x20);
  *hi = _mm256_permute2f128_ps(l, h, 0x31);
}
#endif

/* v + res?, ReLU?, to the first n floats of p (masked stores are slow on some CPUs: only
   a partial vector uses them) */
static inline void store_part(float* p, const float* r, vf v, int64_t n, int relu) {
  if (n >= VL) {
    if (r) v = V_ADD(v, V_LOAD(r));
    if (relu) v = V_MAX(v, V_ZERO());
    _mm_storeu_ps_any(p, v);
  } else {
    const vmask m = v_mask(n);
    if (r) v = V_ADD(v, V_LOADM(m, r));
    if (relu) v = V_MAX(v, V_ZERO());
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
static inline void input_transform(const float* const* rows, int64_t col, float* out,
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
static inline void output_transform(const float* m, int64_t mstride, vf bias, vf* y00,
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

/* y[b, n] = relu?(bias[n] + res?[b, n] + conv3x3(x)[b, n]) by F(2x2, 3x3), stride 1,
   dilation 1, any zero padding. chan: [E] int32, the groups' kept channels, group after
   group; upk: per chunk, U packed [16][channels][filters]; chunks [nchunks][5] (channels,
   first channel entry, first weight, filters, first row of rowmap). geo->block: vectors of
   VL tiles per work item (its tiles may span images). y, res and borders as in sg_dg_conv2d. Returns 0, -1 when memory
   ran out, -2 for a bad block, -3 for a geometry this kernel does not compute. */
int sg_wino_conv2d(const float* x, const sg_geometry* geo, const int32_t* chan, int64_t E,
                   const float* upk, int64_t nchunks, const int64_t* chunks,
                   const int64_t* rowmap, const float* bias, const float* res, float* y,
                   int relu) {
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
  const int64_t th = (Ho + 1) / 2, tw = (Wo + 1) / 2, ntiles = th * tw;
  /* the zero-padded input: x itself when it carries the padding (and 2 VL floats of slack,
     read by the last tiles' loads and dropped), else a padded copy */
  const float* xp = x;
  if (ph || pw) {
    ws = (float*)grow(ws, &ws_cap, sizeof(float) * (size_t)(B * C * plane + 2 * VL));
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
    memset(dst + B * C * plane, 0, sizeof(float) * 2 * VL);
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
  ows = (int64_t*)grow(ows, &ows_cap, sizeof(int64_t) * (E + 16));
  if (!used || !ows) {
    free(used);
    return -1;
  }
  for (int64_t e = 0; e < E; e++) {
    used[chan[e]] = 1;
    ows[e] = chan[e] * T;
  }
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
    /* V: [16][C][T] (xi, channel, tile), then M: [16][rows][T] (xi, filter, tile) */
    float* panel = (float*)grow(ws_panel, &ws_panel_cap,
                                sizeof(float) * (size_t)(16 * (xistride + mstride) + 16));
    ws_panel = panel;
    if (!panel) {
#pragma omp atomic write
      failed = 1;
    }
    float* mb = panel ? panel + 16 * xistride : 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      if (!panel) continue;
      const int64_t part = it % nsplit, blk = it / nsplit;
      const int64_t t0 = blk * T, t1 = t0 + T < B * ntiles ? t0 + T : B * ntiles;
      /* the block's tiles, tile row by tile row: V of every channel some group keeps */
      for (int64_t c = 0; c < C; c++) {
        if (!used[c]) continue;
        for (int64_t s0 = t0; s0 < t1;) {
          const segment g = segment_at(s0, t1, ntiles, tw);
          const float* xc = xp + (g.b * C + c) * plane;
          const float* rows[4];
          for (int a = 0; a < 4; a++) /* a row past the input feeds dropped outputs only */
            rows[a] = xc + (2 * g.ti + a < Hp ? 2 * g.ti + a : Hp - 1) * Wp;
          float* out = panel + c * T + (s0 - t0);
          for (int64_t j = g.ja; j < g.jb; j += VL)
            input_transform(rows, 2 * j, out + (j - g.ja), xistride, g.jb - j);
          s0 += g.jb - g.ja;
        }
      }
      /* M[xi] = U[xi] V[xi], transform point by transform point (its V stays in L1) */
      const int nv = (int)((t1 - t0 + VL - 1) / VL);
      const int64_t c0 = nchunks * part / nsplit, c1 = nchunks * (part + 1) / nsplit;
      for (int xi = 0; xi < 16; xi++)
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
          const float* m = mb + row * T + (s0 - t0);
          for (int64_t j = ja; j < jb; j += VL, m += VL) {
            vf y00, y01, y10, y11, lo, hi;
            output_transform(m, mstride, bv, &y00, &y01, &y10, &y11);
            const int64_t tiles = jb - j < VL ? jb - j : VL;
            const int64_t n_out = 2 * j + 2 * tiles > Wo ? Wo - 2 * j : 2 * tiles;
            const int64_t q = 2 * ti * Wy + 2 * j, qr = 2 * ti * Wo + 2 * j;
            v_interleave(y00, y01, &lo, &hi);
            store_row(yb + q, rb ? rb + qr : 0, lo, hi, n_out, relu);
            if (2 * ti + 1 < Ho) {
              v_interleave(y10, y11, &lo, &hi);
              store_row(yb + q + Wy, rb ? rb + qr + Wo : 0, lo, hi, n_out, relu);
            }
          }
          /* the zero border around the output plane, written by the tiles at its edges */
          for (int64_t a = 0; opw > 0 && a < 2 && 2 * ti + a < Ho; a++) {
            float* yr = yb + (2 * ti + a) * Wy;
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
