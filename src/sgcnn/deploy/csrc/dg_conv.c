/* sgcnn native kernels: diverse group convolution and 2-D max pooling, fp32, NCHW.

   Compiled by sgcnn.deploy._native_build with -O3 -march=native -fopenmp. The vector width follows
   the CPU the library is built for: AVX-512F (16 floats, 32 registers) or AVX2 + FMA
   (8 floats, 16 registers). See sgcnn/deploy/_native.py for the computation. */
#include "sg_simd.h"

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
  ows = (int64_t*)grow(ows, &ows_cap, sizeof(int64_t) * (E + OFFS_SLACK));
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
  for (int64_t e = E; e < E + OFFS_SLACK; e++) ows[e] = 0;
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
    int64_t held = -1; /* the (image, block) whose rows this thread's panel holds */
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      if (!panel) continue;
      const int64_t part = it % nsplit, t = it / nsplit;
      const int64_t blk = t % nblk, b = t / nblk;
      const int64_t q0 = VL * (blk * vbase + (blk < vextra ? blk : vextra));
      int64_t rem = VL * (vbase + (blk < vextra ? 1 : 0));
      if (rem > L - q0) rem = L - q0;
      const int64_t len = rem + maxshift + VL;
      /* a thread's next item is often another share of the same block's chunks (small
         batches): its panel already holds those rows (measured at batch 1: 5-15% off 7x7 and
         14x14 layers, where up to six items share a block) */
      for (int64_t row = 0; row < nrows && t != held; row++) {
        if (!used[row]) continue;
        const int64_t start = b * xs + (row / nph) * cs + (row % nph) * psq + q0;
        int64_t n = len;
        if (start + n > srclen) n = srclen - start;
        memcpy(panel + row * pitch, src + start, sizeof(float) * n);
        if (n < len) memset(panel + row * pitch + n, 0, sizeof(float) * (len - n));
      }
      held = t;
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
          if (c + 1 < c1) {
            /* Prefetch the next chunk's output (and residual) lines while this one computes:
               its filters' planes are a whole plane apart, too many streams for the hardware
               prefetchers (measured: 5-25% off the 1x1 layers of ResNet-50 at batch 16). */
            const int64_t* nx = chunks + 5 * (c + 1);
            for (int r = 0; r < (int)nx[3]; r++) {
              const int64_t n = rowmap[nx[4] + r];
              const char* py = (const char*)(y + (b * N + n) * yplane + q0);
              const char* pr = res ? (const char*)(res + (b * N + n) * rplane + q0) : 0;
              for (int64_t k = 0; k < rem * 4; k += 64) {
                __builtin_prefetch(py + k, 1, 3);
                if (pr && pr != py) __builtin_prefetch(pr + k, 0, 3);
              }
            }
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
          KT[R - 1][V - 1](panel + VL * v0, offs + ch[1], ch[0], wpk + ch[2], out + VL * v0,
                           PBMAX);
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
              const int64_t xx = s - yy * wq;
              if (se - s >= VL) { /* masked stores are slow on some CPUs: full vectors */
                vf v = V_ADD(V_LOAD(o + (s - q0)), bv);
                if (rr) v = V_ADD(v, V_LOAD(rr + yy * Wo + xx));
                if (relu) v = V_RELU(v);
                _mm_storeu_ps_any(yr + yy * Wy + xx, v);
                continue;
              }
              const vmask mm = v_mask(se - s);
              vf v = V_ADD(V_LOADM(mm, o + (s - q0)), bv);
              if (rr) v = V_ADD(v, V_LOADM(mm, rr + yy * Wo + xx));
              if (relu) v = V_RELU(v);
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

/* max(v, m), NaN where either is NaN (as PyTorch's max pooling) */
static inline float max_nan(float v, float m) { return (v > m || v != v) ? v : m; }

/* Max pooling of one plane row by row for strides 1 and 2: t[pw + c] = the maximum of the
   window's input rows at column c (-inf in the padding and past it), then
   y[i, j] = max_b t[j sw + b] over whole vectors of outputs (stride 2: even and odd columns
   split by a deinterleave). t holds (Wo + VL) sw + kw + 2 VL floats. */
static void max_pool_plane(const float* xp, float* yp, float* t, int64_t H, int64_t W,
                           int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t Ho, int64_t Wo) {
  const float ninf = -__builtin_inff();
  const int64_t tlen = (Wo + VL) * sw + kw + 2 * VL;
  for (int64_t c = 0; c < tlen; c++) t[c] = ninf;
  float* tc = t + pw;
  for (int64_t i = 0; i < Ho; i++) {
    int64_t r0 = i * sh - ph, r1 = r0 + kh;
    if (r0 < 0) r0 = 0;
    if (r1 > H) r1 = H;
    int64_t c = 0;
    for (; c + VL <= W; c += VL) {
      vf m = V_LOAD(xp + r0 * W + c);
      for (int64_t r = r0 + 1; r < r1; r++) m = v_max_nan(V_LOAD(xp + r * W + c), m);
      _mm_storeu_ps_any(tc + c, m);
    }
    for (; c < W; c++) {
      float m = xp[r0 * W + c];
      for (int64_t r = r0 + 1; r < r1; r++) m = max_nan(xp[r * W + c], m);
      tc[c] = m;
    }
    float* yr = yp + i * Wo;
    for (int64_t j = 0; j < Wo; j += VL) {
      const float* q = t + j * sw;
      vf m = V_SET1(ninf);
      for (int64_t b = 0; b < kw; b++) {
        vf v, odd;
        if (sw == 1)
          v = V_LOAD(q + b);
        else if (b % 2 == 0)
          v_deinterleave(q + b, &v, &odd);
        else
          v_deinterleave(q + b - 1, &odd, &v);
        m = v_max_nan(v, m);
      }
      if (Wo - j >= VL)
        _mm_storeu_ps_any(yr + j, m);
      else
        V_STOREM(yr + j, v_mask(Wo - j), m);
    }
  }
}

/* y[p, i, j] = max over the kernel window of x[p] (implicit -inf padding, NaN propagates);
   x: [BC][H][W], y: [BC][Ho][Wo]; every window overlaps the input (PyTorch's rule). Returns 0,
   or -1 when memory ran out. */
int sg_max_pool2d(const float* x, float* y, int64_t BC, int64_t H, int64_t W, int64_t kh,
                  int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t Ho,
                  int64_t Wo) {
  int failed = 0;
  if (sw <= 2) { /* vectors of outputs */
#pragma omp parallel
    {
      float* t = (float*)malloc(sizeof(float) * (size_t)((Wo + VL) * sw + kw + 2 * VL));
      if (!t) {
#pragma omp atomic write
        failed = 1;
      }
#pragma omp for schedule(static)
      for (int64_t p = 0; p < BC; p++)
        if (t)
          max_pool_plane(x + p * H * W, y + p * Ho * Wo, t, H, W, kh, kw, sh, sw, ph, pw, Ho,
                         Wo);
      free(t);
    }
    return failed ? -1 : 0;
  }
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
          for (int64_t j = jlo; j < jhi; j++) yr[j] = max_nan(xc[j * sw], yr[j]);
        }
      }
    }
  }
  return 0;
}
