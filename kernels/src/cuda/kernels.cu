// Realm's CUDA kernels, compiled at start by NVRTC for the device's architecture (no CUDA
// headers: NVRTC finds none on a machine that only has the driver).
//
// Activations are f32, row-major. Weights stay in their GGML blocks in device memory and are
// dequantized in registers, a quarter of a 32-element "chunk" at a time: a Q4_0/Q4_1/Q8_0 block
// is one chunk, a K-quant super-block of 256 is eight.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define WARP 32
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// A KV cache element: f32, or f16 (`u16` bits) where the host keeps an f16 cache. Offsets are in
// elements; rows are whole float4s (head_dim is a multiple of 4), so four f16s are 8 aligned
// bytes.
template <typename KV> __device__ __forceinline__ float4 kv_load4(const KV* p);

template <> __device__ __forceinline__ float4 kv_load4<float>(const float* p) {
    return *(const float4*)p;
}

template <> __device__ __forceinline__ float4 kv_load4<u16>(const u16* p) {
    uint2 raw = *(const uint2*)p;
    return make_float4(half_to_float(raw.x & 0xffffu), half_to_float(raw.x >> 16), half_to_float(raw.y & 0xffffu),
                       half_to_float(raw.y >> 16));
}

template <typename KV> __device__ __forceinline__ KV kv_store(float x);

template <> __device__ __forceinline__ float kv_store<float>(float x) {
    return x;
}

template <> __device__ __forceinline__ u16 kv_store<u16>(float x) {
    return float_to_half(x);
}

// GGML blocks are only 2-byte aligned (18, 34 and 210 bytes long, and rows of whole blocks),
// so scales are read as 16-bit words.
__device__ __forceinline__ float load_half(const u8* p) {
    return half_to_float(*(const u16*)p);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// Programmatic dependent launch (sm_90+; the host asks for it on such GPUs): a kernel starts
// while the one before it is still running, does what does not depend on it (index arithmetic,
// prefetching weights, which no kernel writes), then waits here until the one before has
// finished and its writes are visible. Every read or write of activations, caches or counters
// comes after the wait. Only then does it let the next kernel start its own prologue, so at most
// two kernels overlap. Launched without the attribute (older GPUs, REALM_CUDA_PDL=0) this is a
// no-op.
__device__ __forceinline__ void step_wait_release() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Starts bringing `bytes` from `p` into L2 (one 128-byte line per lane of the warp at a time),
// without waiting: the loads that follow find them there instead of in DRAM.
__device__ __forceinline__ void prefetch_l2(const void* p, int bytes, int lane, int lanes) {
    const char* c = (const char*)p;
    for (int off = lane * 128; off < bytes; off += lanes * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

// ---- dequantization ------------------------------------------------------------------------

enum { T_F32 = 0, T_Q4_0 = 1, T_Q4_1 = 2, T_Q8_0 = 3, T_Q4_K = 4, T_Q5_K = 5, T_Q6_K = 6 };

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (`get_scale_min_k4`).
__device__ __forceinline__ void scale_min_k4(int j, const u8* s, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// 8 bytes from an address that is only 2-byte aligned.
__device__ __forceinline__ void load8_a2(const u8* p, u32* lo, u32* hi) {
    const u16* h = (const u16*)p;
    *lo = (u32)h[0] | ((u32)h[1] << 16);
    *hi = (u32)h[2] | ((u32)h[3] << 16);
}

__device__ __forceinline__ int byte_of(u32 lo, u32 hi, int k) {
    return (int)(((k < 4 ? lo : hi) >> (8 * (k & 3))) & 0xFF);
}

// Part p (0..3) of chunk c: 8 weights, which multiply the inputs at chunk offsets o0..o0+3 and
// o1..o1+3. In the matmul four lanes share a chunk, so a warp reads 8 consecutive chunks of a row
// at once (coalesced) and each lane keeps only 8 weights in registers.
template <int T> __device__ __forceinline__ void dequant_part(const u8* row, int c, int p, float* w, int* o0, int* o1);

template <> __device__ __forceinline__ void dequant_part<T_F32>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const float4* f = (const float4*)(row + c * 128 + p * 32);
    float4 a = f[0], b = f[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    *o0 = 8 * p;
    *o1 = 8 * p + 4;
}

template <> __device__ __forceinline__ void dequant_part<T_Q4_0>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + c * 18;
    float d = load_half(b);
    const u16* h = (const u16*)(b + 2 + 4 * p);
    u32 q = (u32)h[0] | ((u32)h[1] << 16);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        u32 byte = (q >> (8 * k)) & 0xFF;
        w[k] = ((int)(byte & 0xF) - 8) * d;
        w[4 + k] = ((int)(byte >> 4) - 8) * d;
    }
    *o0 = 4 * p;
    *o1 = 16 + 4 * p;
}

template <> __device__ __forceinline__ void dequant_part<T_Q4_1>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + c * 20;
    float d = load_half(b), m = load_half(b + 2);
    // 20-byte blocks keep the 16 quant bytes 4-byte aligned.
    u32 q = ((const u32*)(b + 4))[p];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        u32 byte = (q >> (8 * k)) & 0xFF;
        w[k] = (float)(byte & 0xF) * d + m;
        w[4 + k] = (float)(byte >> 4) * d + m;
    }
    *o0 = 4 * p;
    *o1 = 16 + 4 * p;
}

template <> __device__ __forceinline__ void dequant_part<T_Q8_0>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + c * 34;
    float d = load_half(b);
    u32 lo, hi;
    load8_a2(b + 2 + 8 * p, &lo, &hi);
#pragma unroll
    for (int k = 0; k < 8; k++) w[k] = (float)(i8)byte_of(lo, hi, k) * d;
    *o0 = 8 * p;
    *o1 = 8 * p + 4;
}

template <> __device__ __forceinline__ void dequant_part<T_Q4_K>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + (c >> 3) * 144;
    int j = c & 7;
    float d = load_half(b), dmin = load_half(b + 2), sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    // 144-byte super-blocks keep the quants 8-byte aligned.
    const u32* q = (const u32*)(b + 16 + 32 * (j >> 1) + 8 * p);
    u32 lo = q[0], hi = q[1];
    int shift = 4 * (j & 1);
    float ds = d * sc, dm = dmin * m;
#pragma unroll
    for (int k = 0; k < 8; k++) w[k] = ds * (float)((byte_of(lo, hi, k) >> shift) & 0xF) - dm;
    *o0 = 8 * p;
    *o1 = 8 * p + 4;
}

template <> __device__ __forceinline__ void dequant_part<T_Q5_K>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + (c >> 3) * 176;
    int j = c & 7;
    float d = load_half(b), dmin = load_half(b + 2), sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    // 176-byte super-blocks keep the high bits and the quants 8-byte aligned.
    const u32* qh = (const u32*)(b + 16 + 8 * p);
    const u32* q = (const u32*)(b + 48 + 32 * (j >> 1) + 8 * p);
    u32 hlo = qh[0], hhi = qh[1], lo = q[0], hi = q[1];
    int shift = 4 * (j & 1);
    float ds = d * sc, dm = dmin * m;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int v = ((byte_of(lo, hi, k) >> shift) & 0xF) + (((byte_of(hlo, hhi, k) >> j) & 1) << 4);
        w[k] = ds * (float)v - dm;
    }
    *o0 = 8 * p;
    *o1 = 8 * p + 4;
}

template <> __device__ __forceinline__ void dequant_part<T_Q6_K>(const u8* row, int c, int p, float* w, int* o0, int* o1) {
    const u8* b = row + (c >> 3) * 210;
    int j = c & 7;
    int half = j >> 2, k4 = j & 3;
    // 210-byte super-blocks are only 2-byte aligned.
    u32 llo, lhi, hlo, hhi;
    load8_a2(b + 64 * half + 32 * (k4 & 1) + 8 * p, &llo, &lhi);
    load8_a2(b + 128 + 32 * half + 8 * p, &hlo, &hhi);
    float d = load_half(b + 208) * (float)((const i8*)(b + 192))[8 * half + 2 * k4 + (p >> 1)];
    int nib = 4 * (k4 >> 1), hs = 2 * k4;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int v = (((byte_of(llo, lhi, k) >> nib) & 0xF) | (((byte_of(hlo, hhi, k) >> hs) & 3) << 4)) - 32;
        w[k] = d * (float)v;
    }
    *o0 = 8 * p;
    *o1 = 8 * p + 4;
}

// ---- matmul: out[n, rows] = x[n, cols] . W^T -------------------------------------------------
//
// One warp per weight row, up to MM_TILE input rows at once so each dequantized part is used
// MM_TILE times; lanes take quarter chunks in turn and the warp sums at the end. One launch
// serves up to three weights of one format sharing the input (Q, K and V), or accumulates into
// `out` (the residual add fused into a projection), or computes SwiGLU from a gate and an up
// weight. With `norm` set, the input is RMS-normalised on the fly: the lanes cover every column
// of an input row between them, so the warp's sum of squares is the row's, and the product is
// scaled once at the end.

#define MM_WARPS 4
#define MM_TILE 8

enum { MM_STORE = 0, MM_ADD = 1, MM_SWIGLU = 2 };

struct MatmulJobs {
    u64 w[3];
    u64 out[3];
    u64 norm;
    int rows[3];
    int count;
    int mode;
    int row_bytes;
    int cols;
    int n;
    float eps;
};

// Four inputs; through L2 (`L2`) when other blocks of the same launch wrote them, since this
// multiprocessor's L1 may hold an older copy of the line.
template <bool L2> __device__ __forceinline__ float4 load_x4(const float* p) {
    return L2 ? __ldcg((const float4*)p) : *(const float4*)p;
}

template <int T, bool SWIGLU, bool NORM, bool L2 = false>
__device__ __forceinline__ void matmul_part(const u8* wr, const u8* ur, const float* __restrict__ x,
                                            const float* __restrict__ nw, int cols, int n0, int tile, int i,
                                            float* acc, float* acc_up, float* ss) {
    int c = i >> 2, p = i & 3, o0, o1;
    float wv[8], uv[8];
    dequant_part<T>(wr, c, p, wv, &o0, &o1);
    if (SWIGLU) dequant_part<T>(ur, c, p, uv, &o0, &o1);
    if (NORM) {
        float4 na = *(const float4*)(nw + c * 32 + o0), nb = *(const float4*)(nw + c * 32 + o1);
        wv[0] *= na.x; wv[1] *= na.y; wv[2] *= na.z; wv[3] *= na.w;
        wv[4] *= nb.x; wv[5] *= nb.y; wv[6] *= nb.z; wv[7] *= nb.w;
        if (SWIGLU) {
            uv[0] *= na.x; uv[1] *= na.y; uv[2] *= na.z; uv[3] *= na.w;
            uv[4] *= nb.x; uv[5] *= nb.y; uv[6] *= nb.z; uv[7] *= nb.w;
        }
    }
#pragma unroll
    for (int t = 0; t < MM_TILE; t++) {
        if (t < tile) {
            const float* xr = x + (u64)(n0 + t) * cols + c * 32;
            float4 a = load_x4<L2>(xr + o0), b = load_x4<L2>(xr + o1);
            acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x + wv[5] * b.y +
                      wv[6] * b.z + wv[7] * b.w;
            if (SWIGLU)
                acc_up[t] += uv[0] * a.x + uv[1] * a.y + uv[2] * a.z + uv[3] * a.w + uv[4] * b.x + uv[5] * b.y +
                             uv[6] * b.z + uv[7] * b.w;
            if (NORM) ss[t] += dot4(a, a) + dot4(b, b);
        }
    }
}

template <int T, bool SWIGLU, bool NORM>
__device__ void matmul(const MatmulJobs& J, const float* __restrict__ x) {
    // Which job this block serves; constant indices only, so the parameters stay in their
    // constant bank instead of being copied to local memory.
    int block = blockIdx.x, j = 0, rows = J.rows[0];
    int b0 = (J.rows[0] + MM_WARPS - 1) / MM_WARPS, b1 = (J.rows[1] + MM_WARPS - 1) / MM_WARPS;
    if (J.count > 1 && block >= b0) {
        block -= b0;
        j = 1;
        rows = J.rows[1];
        if (J.count > 2 && block >= b1) {
            block -= b1;
            j = 2;
            rows = J.rows[2];
        }
    }
    int cols = J.cols;
    int r = block * MM_WARPS + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    int n0 = blockIdx.y * MM_TILE;
    if (r >= rows) return;
    int tile = min(MM_TILE, J.n - n0);
    u64 wj = j == 0 ? J.w[0] : j == 1 ? J.w[1] : J.w[2];
    u64 oj = j == 0 ? J.out[0] : j == 1 ? J.out[1] : J.out[2];
    const u8* wr = (const u8*)wj + (u64)r * J.row_bytes;
    const u8* ur = (const u8*)J.w[1] + (u64)r * J.row_bytes;
    const float* nw = (const float*)J.norm;
    // The warp's weight rows are on their way to L2 while the kernel before finishes.
    prefetch_l2(wr, J.row_bytes, lane, WARP);
    if (SWIGLU) prefetch_l2(ur, J.row_bytes, lane, WARP);
    step_wait_release();
    float acc[MM_TILE], acc_up[MM_TILE], ss[MM_TILE];
#pragma unroll
    for (int t = 0; t < MM_TILE; t++) acc[t] = acc_up[t] = ss[t] = 0.0f;
    for (int i = lane; i < cols / 8; i += WARP)
        matmul_part<T, SWIGLU, NORM>(wr, ur, x, nw, cols, n0, tile, i, acc, acc_up, ss);
    float* out = (float*)oj;
#pragma unroll
    for (int t = 0; t < MM_TILE; t++) {
        float s = warp_sum(acc[t]);
        float su = SWIGLU ? warp_sum(acc_up[t]) : 0.0f;
        if (NORM) {
            float scale = rsqrtf(warp_sum(ss[t]) / cols + J.eps);
            s *= scale;
            su *= scale;
        }
        if (lane == 0 && t < tile) {
            float* o = out + (u64)(n0 + t) * rows + r;
            if (SWIGLU) *o = s / (1.0f + expf(-s)) * su;
            else if (J.mode == MM_ADD) *o += s;
            else *o = s;
        }
    }
}

// Without the norm a kernel fits 64 registers, so 16 blocks (all 64 warps) stay resident on a
// multiprocessor, which the wide grids of prefill need; the norm variants take 72-79.
#define MATMUL(name, norm_name, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * WARP, 8) name(const MatmulJobs jobs, const float* x) {  \
        if (jobs.mode == MM_SWIGLU) matmul<T, true, false>(jobs, x);                                             \
        else matmul<T, false, false>(jobs, x);                                                                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * WARP, 6) norm_name(const MatmulJobs jobs,              \
                                                                              const float* x) {                   \
        if (jobs.mode == MM_SWIGLU) matmul<T, true, true>(jobs, x);                                              \
        else matmul<T, false, true>(jobs, x);                                                                    \
    }

MATMUL(matmul_f32, matmul_norm_f32, T_F32)
MATMUL(matmul_q4_0, matmul_norm_q4_0, T_Q4_0)
MATMUL(matmul_q4_1, matmul_norm_q4_1, T_Q4_1)
MATMUL(matmul_q8_0, matmul_norm_q8_0, T_Q8_0)
MATMUL(matmul_q4_k, matmul_norm_q4_k, T_Q4_K)
MATMUL(matmul_q5_k, matmul_norm_q5_k, T_Q5_K)
MATMUL(matmul_q6_k, matmul_norm_q6_k, T_Q6_K)

// ---- embedding: out[i] = table[ids[i]] -------------------------------------------------------

// Row `row` (cols long) dequantized into `o` by the block's threads.
template <int T> __device__ void embed_row(const u8* __restrict__ row, int cols, float* __restrict__ o) {
    for (int part = threadIdx.x; part < cols / 8; part += blockDim.x) {
        int c = part >> 2, o0, o1;
        float w[8];
        dequant_part<T>(row, c, part & 3, w, &o0, &o1);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            o[c * 32 + o0 + k] = w[k];
            o[c * 32 + o1 + k] = w[4 + k];
        }
    }
}

template <int T>
__device__ void embed(const u8* __restrict__ table, int cols, int row_bytes, const u32* __restrict__ ids,
                      float* __restrict__ out) {
    step_wait_release();
    embed_row<T>(table + (u64)ids[blockIdx.x] * row_bytes, cols, out + (u64)blockIdx.x * cols);
}

#define EMBED(name, T)                                                                                 \
    extern "C" __global__ void name(const u8* table, int cols, int row_bytes, const u32* ids, float* out) { \
        embed<T>(table, cols, row_bytes, ids, out);                                                    \
    }

EMBED(embed_f32, T_F32)
EMBED(embed_q4_0, T_Q4_0)
EMBED(embed_q4_1, T_Q4_1)
EMBED(embed_q8_0, T_Q8_0)
EMBED(embed_q4_k, T_Q4_K)
EMBED(embed_q5_k, T_Q5_K)
EMBED(embed_q6_k, T_Q6_K)

// ---- element-wise and row ops ----------------------------------------------------------------

// One block of 256 threads per row.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, int cols, float eps,
                                    float* __restrict__ out) {
    __shared__ float partial[256 / WARP];
    step_wait_release();
    const float* xr = x + (u64)blockIdx.x * cols;
    float s = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += xr[i] * xr[i];
    s = warp_sum(s);
    if (threadIdx.x % WARP == 0) partial[threadIdx.x / WARP] = s;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < (int)(blockDim.x / WARP); i++) total += partial[i];
    float scale = rsqrtf(total / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(u64)blockIdx.x * cols + i] = xr[i] * scale * w[i];
}

extern "C" __global__ void silu_mul(float* gate, const float* up, int len) {
    step_wait_release();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add(float* x, const float* y, int len) {
    step_wait_release();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) x[i] += y[i];
}

// The index of the largest value of row blockIdx.x (greedy sampling on the device), one block of
// ARGMAX_THREADS per row. Each thread keeps the first of its largest values (a strict `>`, which
// is false for NaN); equal values across threads go to the lower index. A row with nothing above
// -inf gives ARGMAX_NONE. The same answer as the host's `argmax`.
#define ARGMAX_THREADS 1024
#define ARGMAX_NONE 0xFFFFFFFFu

__device__ __forceinline__ void argmax_pick(float* best, u32* idx, float v, u32 i) {
    if (v > *best || (v == *best && i < *idx)) {
        *best = v;
        *idx = i;
    }
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows(const float* __restrict__ x, int row_len,
                                                                        u32* __restrict__ out) {
    __shared__ float warp_best[ARGMAX_THREADS / WARP];
    __shared__ u32 warp_idx[ARGMAX_THREADS / WARP];
    step_wait_release();
    const float* r = x + (u64)blockIdx.x * row_len;
    float best = NEG_INF;
    u32 idx = ARGMAX_NONE;
    for (int i = threadIdx.x; i < row_len; i += ARGMAX_THREADS) {
        float v = r[i];
        if (v > best) {
            best = v;
            idx = i;
        }
    }
    for (int o = WARP / 2; o > 0; o >>= 1)
        argmax_pick(&best, &idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (lane == 0) {
        warp_best[warp] = best;
        warp_idx[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        best = warp_best[lane];
        idx = warp_idx[lane];
        for (int o = WARP / 2; o > 0; o >>= 1)
            argmax_pick(&best, &idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0) out[blockIdx.x] = idx;
    }
}

// Rotates every head of row blockIdx.x of x0 (blockIdx.y == 0) or x1 (== 1) by positions[row];
// `neox` pairs (i, i + n_rot/2), otherwise (2i, 2i + 1). Queries and keys go in one launch. The
// angle is position * base^(-2i/n_rot), in f64 as on the CPU: in f32 it drifts by ~1e-3
// radians at positions in the thousands.
__device__ void rotate_row(float* row, int row_len, int head_dim, int n_rot, u32 position, double log2_base,
                           int neox) {
    int half = n_rot / 2;
    double pos = (double)position;
    int heads = row_len / head_dim;
    for (int t = threadIdx.x; t < heads * half; t += blockDim.x) {
        int h = t / half, i = t % half;
        double sd, cd;
        sincos(pos * exp2(-2.0 * i / n_rot * log2_base), &sd, &cd);
        float s = (float)sd, c = (float)cd;
        float* head = row + h * head_dim;
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0v = head[a], x1v = head[b];
        head[a] = x0v * c - x1v * s;
        head[b] = x0v * s + x1v * c;
    }
}

extern "C" __global__ void rope(float* x0, int len0, float* x1, int len1, int head_dim, int n_rot,
                                const u32* positions, double log2_base, int neox) {
    step_wait_release();
    int row_len = blockIdx.y ? len1 : len0;
    float* row = (blockIdx.y ? x1 : x0) + (u64)blockIdx.x * row_len;
    rotate_row(row, row_len, head_dim, n_rot, positions[blockIdx.x], log2_base, neox);
}

// ---- attention -------------------------------------------------------------------------------
//
// Flash-decoding: one block per (query row, KV head, run of `split_len` positions); the host sizes
// the runs so a step fills the GPU however few rows it has. The query heads sharing the KV head
// (GQA) are handled together, so each key and value row is read once per block. Per tile of
// positions: the block stages the tile's keys and values in shared memory (coalesced), every
// thread scores positions for one head against the staged keys, one warp per head takes the
// softmax, then threads own (head, dim) accumulators and sum the staged value rows. Runs of
// positions are merged by `attention_merge`, or written directly when one run covers every
// row's context.
//
// The step's sequences come by value (kernel parameters, no copy to the device): a copy from
// pageable memory would make the host wait for the GPU at every layer.

#define AT_THREADS 128
#define AT_TILE 64
#define AT_TILE_FLOATS 4096
#define AT_MAX_SEQS 32
#define AT_MAX_GD 1024
#define AT_MAX_GROUP 8

struct AttnSeqs {
    u64 k[AT_MAX_SEQS];
    u64 v[AT_MAX_SEQS];
    u32 first_pos[AT_MAX_SEQS];
    u32 row[AT_MAX_SEQS];
    u32 n[AT_MAX_SEQS];
    u32 count;
};

struct AttnShape {
    int n_head, n_kv_head, head_dim, splits, split_len;
    float scale;
};

// A decode step's RoPE and KV append done inside the attention launch (`k_new` non-zero): the
// queries are rotated as they are loaded, and the block whose run holds a row's position
// rotates that row's key for its KV head and appends it and the value to the caches. The new
// rows (one per sequence) are `k_new`/`v_new`, rows of n_kv_head * head_dim.
struct AttnRope {
    u64 k_new, v_new;
    int n_rot, neox;
    double log2_base;
};

// Merges the runs of positions of one (query row i, KV head g) into the output. The runs were
// written by other blocks of this launch: read through L2 (`__ldcg`), never a stale L1 line.
__device__ void merge_runs(const AttnShape& sh, int i, int g, int pos, int row, const float* partial, float* out) {
    int G = sh.n_head / sh.n_kv_head, D = sh.head_dim, GD = G * D;
    int used = pos / sh.split_len + 1;
    const float* base = partial + ((u64)i * sh.n_kv_head + g) * sh.splits * (GD + 2 * G);
    float* o = out + (u64)row * sh.n_head * D + g * GD;
    for (int jd = threadIdx.x; jd < GD; jd += blockDim.x) {
        int j = jd / D;
        float mx = NEG_INF;
        for (int s = 0; s < used; s++) mx = fmaxf(mx, __ldcg(base + s * (GD + 2 * G) + j));
        float num = 0.0f, den = 0.0f;
        for (int s = 0; s < used; s++) {
            const float* part = base + s * (GD + 2 * G);
            float w = expf(__ldcg(part + j) - mx);
            den += __ldcg(part + G + j) * w;
            num += __ldcg(part + 2 * G + jd) * w;
        }
        o[jd] = num / den;
    }
}

// Which sequence and token the flat row index `i` is.
__device__ __forceinline__ void seq_of(const AttnSeqs& s, int i, int* seq, int* t) {
    int k = 0;
    while (k + 1 < (int)s.count && i >= (int)s.n[k]) {
        i -= s.n[k];
        k++;
    }
    *seq = k;
    *t = i;
}

// One attention block's work: query row `row` at position `pos` of the sequence cached in
// `kc`/`vc`, KV head `g`, run `split`; `slot` indexes the (row, KV head) pair's partial results
// and arrival counter. A kernel of THREADS threads calls it once per block, or once per (KV
// head, run) in turn (the whole-step kernel). The query and the new key and value rows come
// through L2, as the whole-step kernel's other blocks wrote them moments before.
// The host guarantees head_dim is a multiple of 4 and at most AT_TILE_FLOATS, and
// G * head_dim <= AT_MAX_GD with G <= AT_MAX_GROUP.
template <int THREADS, typename KV>
__device__ void attend(const float* __restrict__ q, const KV* kc, const KV* vc, int row, int pos, int slot,
                       int g, int split, const AttnShape& sh, float* __restrict__ out, float* __restrict__ partial,
                       u32* __restrict__ arrived, const AttnRope& fuse) {
    // Key rows are padded by 4 floats so the threads of a quarter warp, reading one float4 each
    // from consecutive rows, hit distinct banks.
    __shared__ __align__(16) float ks[AT_TILE_FLOATS + 4 * AT_TILE];
    __shared__ __align__(16) float vs[AT_TILE_FLOATS];
    __shared__ __align__(16) float qs[AT_MAX_GD];
    __shared__ float pw[AT_MAX_GROUP][AT_TILE];
    __shared__ float m_run[AT_MAX_GROUP], l_run[AT_MAX_GROUP], corr[AT_MAX_GROUP];
    int G = sh.n_head / sh.n_kv_head, D = sh.head_dim, GD = G * D, D4 = D / 4, KS = D + 4;
    int tp = min(AT_TILE, AT_TILE_FLOATS / D);
    int begin = split * sh.split_len, end = min(begin + sh.split_len, pos + 1);
    int kv_len = sh.n_kv_head * D;
    const float* qr = q + (u64)row * sh.n_head * D + g * GD;
    if (fuse.k_new) {
        for (int i = threadIdx.x; i < GD; i += THREADS) qs[i] = __ldcg(qr + i);
        __syncthreads();
        rotate_row(qs, GD, D, fuse.n_rot, pos, fuse.log2_base, fuse.neox);
        __syncthreads();
        for (int i = threadIdx.x; i < GD; i += THREADS) qs[i] *= sh.scale;
        if (pos >= begin && pos < begin + sh.split_len) {
            // This block's run holds the new position: the key row of this KV head, rotated
            // (staged in `vs`, free until the first tile), and the value row go to the caches.
            const float* kn = (const float*)fuse.k_new + (u64)row * kv_len + g * D;
            const float* vn = (const float*)fuse.v_new + (u64)row * kv_len + g * D;
            for (int i = threadIdx.x; i < D; i += THREADS) vs[i] = __ldcg(kn + i);
            __syncthreads();
            rotate_row(vs, D, D, fuse.n_rot, pos, fuse.log2_base, fuse.neox);
            __syncthreads();
            KV* kw = (KV*)kc + (u64)pos * kv_len + g * D;
            KV* vw = (KV*)vc + (u64)pos * kv_len + g * D;
            for (int i = threadIdx.x; i < D; i += THREADS) {
                kw[i] = kv_store<KV>(vs[i]);
                vw[i] = kv_store<KV>(__ldcg(vn + i));
            }
        }
        // The tiles below read the appended rows and overwrite `vs`.
        __syncthreads();
    } else {
        for (int i = threadIdx.x; i < GD; i += THREADS) qs[i] = __ldcg(qr + i) * sh.scale;
    }
    if (threadIdx.x < G) {
        m_run[threadIdx.x] = NEG_INF;
        l_run[threadIdx.x] = 0.0f;
    }
    const int per_thread = AT_MAX_GD / THREADS;
    float acc[per_thread];
#pragma unroll
    for (int i = 0; i < per_thread; i++) acc[i] = 0.0f;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;

    for (int tile = begin; tile < end; tile += tp) {
        int count = min(tp, end - tile);
        for (int i = threadIdx.x; i < count * D4; i += THREADS) {
            int p = i / D4, d4 = i % D4;
            u64 off = (u64)(tile + p) * kv_len + g * D;
            *(float4*)(ks + p * KS + 4 * d4) = kv_load4(kc + off + 4 * d4);
            *(float4*)(vs + p * D + 4 * d4) = kv_load4(vc + off + 4 * d4);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < G * tp; i += THREADS) {
            int j = i / tp, p = i % tp;
            float s = NEG_INF;
            if (p < count) {
                const float4* kr = (const float4*)(ks + p * KS);
                const float4* qv = (const float4*)(qs + j * D);
                s = 0.0f;
                for (int d4 = 0; d4 < D4; d4++) s += dot4(kr[d4], qv[d4]);
            }
            pw[j][p] = s;
        }
        __syncthreads();
        // One warp per head finds the tile's maximum and rescales the running sums.
        for (int j = warp; j < G; j += THREADS / WARP) {
            float mx = NEG_INF;
            for (int i = lane; i < tp; i += WARP) mx = fmaxf(mx, pw[j][i]);
            mx = warp_max(mx);
            float m_new = fmaxf(m_run[j], mx);
            float sum = 0.0f;
            for (int i = lane; i < tp; i += WARP) {
                float e = expf(pw[j][i] - m_new);
                pw[j][i] = e;
                sum += e;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                float c = expf(m_run[j] - m_new);
                corr[j] = c;
                l_run[j] = l_run[j] * c + sum;
                m_run[j] = m_new;
            }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < per_thread; i++) {
            int jd = threadIdx.x + i * THREADS;
            if (jd < GD) {
                int j = jd / D, d = jd % D;
                float a = acc[i] * corr[j];
                for (int k = 0; k < count; k++) a += pw[j][k] * vs[k * D + d];
                acc[i] = a;
            }
        }
        __syncthreads();
    }

    if (sh.splits == 1) {
        float* o = out + (u64)row * sh.n_head * D + g * GD;
#pragma unroll
        for (int i = 0; i < per_thread; i++) {
            int jd = threadIdx.x + i * THREADS;
            if (jd < GD) o[jd] = acc[i] / l_run[jd / D];
        }
        return;
    }
    // Partial results: G maxima, G sums, then G*D accumulators.
    float* part = partial + (((u64)slot * sh.n_kv_head + g) * sh.splits + split) * (GD + 2 * G);
    if (threadIdx.x < G) {
        part[threadIdx.x] = m_run[threadIdx.x];
        part[G + threadIdx.x] = l_run[threadIdx.x];
    }
#pragma unroll
    for (int i = 0; i < per_thread; i++) {
        int jd = threadIdx.x + i * THREADS;
        if (jd < GD) part[2 * G + jd] = acc[i];
    }
    // The last block of this (row, KV head) to finish merges the runs (no second launch), and
    // puts its arrival counter back to zero for the next launch.
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        u32* counter = arrived + (u64)slot * sh.n_kv_head + g;
        last = atomicAdd(counter, 1u) == (u32)sh.splits - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    if (last) {
        __threadfence();
        merge_runs(sh, slot, g, pos, row, partial, out);
    }
}

template <typename KV>
__device__ __forceinline__ void attention_body(const float* __restrict__ q, const AttnSeqs& seqs, const AttnShape& sh,
                                               float* __restrict__ out, float* __restrict__ partial,
                                               u32* __restrict__ arrived, const u32* __restrict__ positions,
                                               const AttnRope& fuse) {
    int seq, t;
    seq_of(seqs, blockIdx.x, &seq, &t);
    int g = blockIdx.y, split = blockIdx.z;
    // Each row's position: from the step's uploaded positions when given (the arguments then
    // stay the same from step to step, for CUDA graphs), else from its sequence's first.
    int row = seqs.row[seq] + t;
    int pos = positions ? (int)positions[row] : (int)seqs.first_pos[seq] + t;
    int begin = split * sh.split_len, end = min(begin + sh.split_len, pos + 1);
    const KV* kc = (const KV*)seqs.k[seq];
    const KV* vc = (const KV*)seqs.v[seq];
    u64 kv_len = sh.n_kv_head * sh.head_dim;
    // The run's cached keys and values head for L2 while the kernel before finishes (rows
    // written this step go through L2 as well, so nothing stale is fetched).
    for (int p = begin + threadIdx.x / 2; p < end; p += AT_THREADS / 2) {
        u64 off = (u64)p * kv_len + g * sh.head_dim;
        prefetch_l2(kc + off, sh.head_dim * (int)sizeof(KV), threadIdx.x % 2, 2);
        prefetch_l2(vc + off, sh.head_dim * (int)sizeof(KV), threadIdx.x % 2, 2);
    }
    step_wait_release();
    attend<AT_THREADS, KV>(q, kc, vc, row, pos, blockIdx.x, g, split, sh, out, partial, arrived, fuse);
}

extern "C" __global__ void __launch_bounds__(AT_THREADS)
    attention(const float* __restrict__ q, const AttnSeqs seqs, const AttnShape sh, float* __restrict__ out,
              float* __restrict__ partial, u32* __restrict__ arrived, const u32* __restrict__ positions,
              const AttnRope fuse) {
    attention_body<float>(q, seqs, sh, out, partial, arrived, positions, fuse);
}

// `attention` over f16 caches.
extern "C" __global__ void __launch_bounds__(AT_THREADS)
    attention_f16(const float* __restrict__ q, const AttnSeqs seqs, const AttnShape sh, float* __restrict__ out,
                  float* __restrict__ partial, u32* __restrict__ arrived, const u32* __restrict__ positions,
                  const AttnRope fuse) {
    attention_body<u16>(q, seqs, sh, out, partial, arrived, positions, fuse);
}


// Appends every sequence's new key and value rows to its caches (one block per new row).
template <typename KV>
__device__ __forceinline__ void kv_write_body(const AttnSeqs& seqs, const float* __restrict__ k,
                                              const float* __restrict__ v, int row_len) {
    step_wait_release();
    int seq, t;
    seq_of(seqs, blockIdx.x, &seq, &t);
    u64 src = (u64)(seqs.row[seq] + t) * row_len, dst = (u64)(seqs.first_pos[seq] + t) * row_len;
    KV* kc = (KV*)seqs.k[seq];
    KV* vc = (KV*)seqs.v[seq];
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        kc[dst + i] = kv_store<KV>(k[src + i]);
        vc[dst + i] = kv_store<KV>(v[src + i]);
    }
}

extern "C" __global__ void kv_write(const AttnSeqs seqs, const float* __restrict__ k, const float* __restrict__ v,
                                    int row_len) {
    kv_write_body<float>(seqs, k, v, row_len);
}

extern "C" __global__ void kv_write_f16(const AttnSeqs seqs, const float* __restrict__ k,
                                        const float* __restrict__ v, int row_len) {
    kv_write_body<u16>(seqs, k, v, row_len);
}

// `rope` of queries and keys and `kv_write` in one launch: block (i, 0) rotates query row i,
// (i, 1) rotates key row i and appends it to its sequence's cache at its position, (i, 2)
// appends value row i.
template <typename KV>
__device__ __forceinline__ void rope_kv_write_body(const AttnSeqs& seqs, float* q, int q_len, float* k,
                                                   const float* v, int kv_len, int head_dim, int n_rot,
                                                   const u32* positions, double log2_base, int neox) {
    step_wait_release();
    int seq, t;
    seq_of(seqs, blockIdx.x, &seq, &t);
    // The host checked each row goes to the cache row of its position.
    u64 row = seqs.row[seq] + t, dst = (u64)positions[row] * kv_len;
    if (blockIdx.y == 0) {
        rotate_row(q + row * q_len, q_len, head_dim, n_rot, positions[row], log2_base, neox);
        return;
    }
    if (blockIdx.y == 2) {
        KV* vc = (KV*)seqs.v[seq];
        for (int i = threadIdx.x; i < kv_len; i += blockDim.x) vc[dst + i] = kv_store<KV>(v[row * kv_len + i]);
        return;
    }
    float* kr = k + row * kv_len;
    rotate_row(kr, kv_len, head_dim, n_rot, positions[row], log2_base, neox);
    // Each thread copies elements other threads rotated.
    __syncthreads();
    KV* kc = (KV*)seqs.k[seq];
    for (int i = threadIdx.x; i < kv_len; i += blockDim.x) kc[dst + i] = kv_store<KV>(kr[i]);
}

extern "C" __global__ void rope_kv_write(const AttnSeqs seqs, float* q, int q_len, float* k, const float* v,
                                         int kv_len, int head_dim, int n_rot, const u32* positions,
                                         double log2_base, int neox) {
    rope_kv_write_body<float>(seqs, q, q_len, k, v, kv_len, head_dim, n_rot, positions, log2_base, neox);
}

extern "C" __global__ void rope_kv_write_f16(const AttnSeqs seqs, float* q, int q_len, float* k, const float* v,
                                             int kv_len, int head_dim, int n_rot, const u32* positions,
                                             double log2_base, int neox) {
    rope_kv_write_body<u16>(seqs, q, q_len, k, v, kv_len, head_dim, n_rot, positions, log2_base, neox);
}
