#include <stdint.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* out[i, j, k] += sum_l lerp(qp_l, p_l),  p_l = c0 + c1 i + c2 j + c3 k clamped to [0, hi];
   qp: (L, MP) profiles with qp[0] = qp[MP - 2] = qp[MP - 1] = 0, hi = MP - 2. */
void bp_scalar(const float* qp, const float* coef, float* out, int64_t L, int64_t MP,
               int64_t D, int64_t H, int64_t W, int nthreads) {
    const float hi = (float)(MP - 2);
    #pragma omp parallel for collapse(2) schedule(dynamic, 8) num_threads(nthreads)
    for (int64_t i = 0; i < D; i++) {
        for (int64_t j = 0; j < H; j++) {
            float* o = out + (i * H + j) * W;
#ifdef __AVX512F__
            const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(hi);
            const __m512 kofs = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            int64_t k0 = 0;
            for (; k0 + 64 <= W; k0 += 64) {  /* 4 x 16 voxels per pass over the directions */
                __m512 acc[4], kv[4];
                for (int u = 0; u < 4; u++) {
                    acc[u] = zero;
                    kv[u] = _mm512_add_ps(kofs, _mm512_set1_ps((float)(k0 + 16 * u)));
                }
                for (int64_t l = 0; l < L; l++) {
                    const float* c = coef + 4 * l;
                    const float* q = qp + l * MP;
                    const __m512 base = _mm512_set1_ps(c[0] + c[1] * (float)i + c[2] * (float)j);
                    const __m512 ck = _mm512_set1_ps(c[3]);
                    for (int u = 0; u < 4; u++) {
                        __m512 p = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(ck, kv[u], base), zero), top);
                        __m512i cell = _mm512_cvttps_epi32(p);  /* max(NaN, 0) = 0 above */
                        __m512 f = _mm512_sub_ps(p, _mm512_cvtepi32_ps(cell));
                        __m512 v0 = _mm512_i32gather_ps(cell, q, 4);
                        __m512 v1 = _mm512_i32gather_ps(cell, q + 1, 4);
                        acc[u] = _mm512_add_ps(acc[u], _mm512_fmadd_ps(f, _mm512_sub_ps(v1, v0), v0));
                    }
                }
                for (int u = 0; u < 4; u++)
                    _mm512_storeu_ps(o + k0 + 16 * u, _mm512_add_ps(_mm512_loadu_ps(o + k0 + 16 * u), acc[u]));
            }
            for (; k0 < W; k0 += 16) {  /* the tail, 16 voxels at a time, masked */
                __mmask16 m = (W - k0) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - k0)) - 1u);
                __m512 kv = _mm512_add_ps(kofs, _mm512_set1_ps((float)k0));
                __m512 acc = zero;
                for (int64_t l = 0; l < L; l++) {
                    const float* c = coef + 4 * l;
                    const float* q = qp + l * MP;
                    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(c[3]), kv,
                                               _mm512_set1_ps(c[0] + c[1] * (float)i + c[2] * (float)j));
                    p = _mm512_min_ps(_mm512_max_ps(p, zero), top);
                    __m512i cell = _mm512_cvttps_epi32(p);
                    __m512 f = _mm512_sub_ps(p, _mm512_cvtepi32_ps(cell));
                    __m512 v0 = _mm512_i32gather_ps(cell, q, 4);
                    __m512 v1 = _mm512_i32gather_ps(cell, q + 1, 4);
                    acc = _mm512_add_ps(acc, _mm512_fmadd_ps(f, _mm512_sub_ps(v1, v0), v0));
                }
                _mm512_mask_storeu_ps(o + k0, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + k0), acc));
            }
#else
            for (int64_t l = 0; l < L; l++) {
                const float* c = coef + 4 * l;
                const float* q = qp + l * MP;
                const float base = c[0] + c[1] * (float)i + c[2] * (float)j, ck = c[3];
                #pragma omp simd
                for (int64_t k = 0; k < W; k++) {
                    float p = base + ck * (float)k;
                    p = p > 0.0f ? p : 0.0f;
                    p = p < hi ? p : hi;
                    int cell = (int)p;
                    float f = p - (float)cell;
                    o[k] += q[cell] + f * (q[cell + 1] - q[cell]);
                }
            }
#endif
        }
    }
}

/* out (N, C, h, w) = trilinear samples of vol (C, D, H, W), zero outside, at voxel-index
   positions frames[n] = (origin, row step, column step), 9 floats in (d, h, w) order:
   pixel (i, j) of slice n samples origin + i * row + j * col. */
void slice_trilinear(const float* vol, int64_t C, int64_t D, int64_t H, int64_t W,
                     const float* frames, float* out, int64_t N, int64_t h, int64_t w, int nthreads) {
    const int64_t plane = D * H * W;
    #pragma omp parallel for collapse(2) schedule(dynamic, 8) num_threads(nthreads)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t i = 0; i < h; i++) {
            const float* f = frames + 9 * n;
            const float bz = f[0] + (float)i * f[3], by = f[1] + (float)i * f[4], bx = f[2] + (float)i * f[5];
            float* o = out + n * C * h * w + i * w;
#ifdef __AVX512F__
            const __m512 jofs = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const __m512 lo = _mm512_set1_ps(-2.0f), one = _mm512_set1_ps(1.0f);
            const __m512 hz = _mm512_set1_ps((float)D + 1), hy = _mm512_set1_ps((float)H + 1), hx = _mm512_set1_ps((float)W + 1);
            const __m512i zero_i = _mm512_setzero_si512();
            const __m512i nz = _mm512_set1_epi32((int)D), ny = _mm512_set1_epi32((int)H), nx = _mm512_set1_epi32((int)W);
            const __m512i sh = _mm512_set1_epi32((int)H), sw = _mm512_set1_epi32((int)W);
            for (int64_t j0 = 0; j0 < w; j0 += 16) {
                __mmask16 m = (w - j0) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - j0)) - 1u);
                __m512 jv = _mm512_add_ps(jofs, _mm512_set1_ps((float)j0));
                /* clamp to [-2, n + 1]: keeps every corner's in/out status, keeps ints small; NaN -> -2 */
                __m512 z = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[6]), _mm512_set1_ps(bz)), lo), hz);
                __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[7]), _mm512_set1_ps(by)), lo), hy);
                __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(jv, _mm512_set1_ps(f[8]), _mm512_set1_ps(bx)), lo), hx);
                __m512 z0 = _mm512_roundscale_ps(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 y0 = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 x0 = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                __m512 wz[2], wy[2], wx[2];
                wz[1] = _mm512_sub_ps(z, z0); wz[0] = _mm512_sub_ps(one, wz[1]);
                wy[1] = _mm512_sub_ps(y, y0); wy[0] = _mm512_sub_ps(one, wy[1]);
                wx[1] = _mm512_sub_ps(x, x0); wx[0] = _mm512_sub_ps(one, wx[1]);
                __m512i iz = _mm512_cvtps_epi32(z0), iy = _mm512_cvtps_epi32(y0), ix = _mm512_cvtps_epi32(x0);
                __m512i idx[8];
                __mmask16 ok[8];
                __m512 wt[8];
                for (int c8 = 0; c8 < 8; c8++) {
                    int dz = c8 >> 2, dy = (c8 >> 1) & 1, dx = c8 & 1;
                    __m512i zz = _mm512_add_epi32(iz, _mm512_set1_epi32(dz));
                    __m512i yy = _mm512_add_epi32(iy, _mm512_set1_epi32(dy));
                    __m512i xx = _mm512_add_epi32(ix, _mm512_set1_epi32(dx));
                    ok[c8] = m & _mm512_cmpge_epi32_mask(zz, zero_i) & _mm512_cmplt_epi32_mask(zz, nz)
                               & _mm512_cmpge_epi32_mask(yy, zero_i) & _mm512_cmplt_epi32_mask(yy, ny)
                               & _mm512_cmpge_epi32_mask(xx, zero_i) & _mm512_cmplt_epi32_mask(xx, nx);
                    idx[c8] = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(_mm512_mullo_epi32(zz, sh), yy), sw), xx);
                    wt[c8] = _mm512_mul_ps(_mm512_mul_ps(wz[dz], wy[dy]), wx[dx]);
                }
                for (int64_t c = 0; c < C; c++) {
                    const float* v = vol + c * plane;
                    __m512 acc = _mm512_setzero_ps();
                    for (int c8 = 0; c8 < 8; c8++)
                        acc = _mm512_fmadd_ps(wt[c8], _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok[c8], idx[c8], v, 4), acc);
                    _mm512_mask_storeu_ps(o + c * h * w + j0, m, acc);
                }
            }
#else
            for (int64_t j = 0; j < w; j++) {
                float z = bz + (float)j * f[6], y = by + (float)j * f[7], x = bx + (float)j * f[8];
                z = z > -2.0f ? z : -2.0f; z = z < (float)D + 1 ? z : (float)D + 1;
                y = y > -2.0f ? y : -2.0f; y = y < (float)H + 1 ? y : (float)H + 1;
                x = x > -2.0f ? x : -2.0f; x = x < (float)W + 1 ? x : (float)W + 1;
                float z0 = floorf(z), y0 = floorf(y), x0 = floorf(x);
                float wz[2] = {1 - (z - z0), z - z0}, wy[2] = {1 - (y - y0), y - y0}, wx[2] = {1 - (x - x0), x - x0};
                int iz = (int)z0, iy = (int)y0, ix = (int)x0;
                for (int64_t c = 0; c < C; c++) {
                    const float* v = vol + c * plane;
                    float acc = 0.0f;
                    for (int c8 = 0; c8 < 8; c8++) {
                        int zz = iz + (c8 >> 2), yy = iy + ((c8 >> 1) & 1), xx = ix + (c8 & 1);
                        if (zz >= 0 && zz < D && yy >= 0 && yy < H && xx >= 0 && xx < W)
                            acc += wz[c8 >> 2] * wy[(c8 >> 1) & 1] * wx[c8 & 1] * v[((int64_t)zz * H + yy) * W + xx];
                    }
                    o[c * h * w + j] = acc;
                }
            }
#endif
        }
    }
}
