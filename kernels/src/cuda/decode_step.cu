
// ---- a whole decode step in one launch ------------------------------------------------------
//
// At batch 1 a small model's decode step is ~150 kernels of a few microseconds each, every one
// bound by latency (launch, first loads, tail), not by bytes. `decode_step` runs the whole step
// (embedding, every layer, final norm and output head) as one cooperative launch with one block
// per multiprocessor, the phases separated by a grid-wide barrier instead of kernel boundaries.
// Each warp takes weight rows in turn; before a barrier every warp sends the rows it will read
// in the next phase towards L2, so a phase starts with its weights on chip. Activations written
// by other blocks are read through L2 (`__ldcg`): a multiprocessor's L1 is not coherent.

#define STEP_THREADS 512
#define STEP_WARPS (STEP_THREADS / WARP)

// One weight as the whole-step kernel reads it.
struct StepWeight {
    u64 w;
    int ty;
    int row_bytes;
};

// One layer: its weights (norms are f32 vectors) and its KV cache, rows of n_kv_head * head_dim.
struct StepLayer {
    StepWeight q, k, v, o, gate, up, down;
    u64 attn_norm, ffn_norm, k_cache, v_cache;
};

struct StepArgs {
    u64 layers;  // StepLayer[n_layer] in device memory
    u64 out_norm;
    // Activations: the residual stream, Q/K/V, attention output, SwiGLU output, logits.
    u64 x, q, k, v, att, h, logits;
    // Attention's partial results and arrival counters; the barrier's word; where block 0
    // stamps the time at each phase boundary (0: not timed).
    u64 partial, arrived, barrier, timing;
    StepWeight embd, head;
    AttnShape sh;
    AttnRope rope;  // k_new/v_new are `k` and `v`
    int n_layer, dim, kv_dim, ffn, vocab, token, pos;
    float eps;
};

__device__ __forceinline__ u32 load_relaxed(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Every block waits here until all have arrived; their writes before it are visible after it.
// One word and one atomic per block, as cooperative groups' grid sync does: block 0 adds
// 2^31 - (blocks - 1) and every other block 1, so the word's top bit flips exactly when the last
// block arrives and its other bits are back where they were (never reset). A block waits for
// the top bit to differ from what its own add saw. Cooperative launch guarantees every block is
// resident, so the wait ends; should it not within STEP_BARRIER_NS, the kernel traps and the
// host gets a launch error instead of a hung GPU.
#define STEP_BARRIER_NS 5000000000ull

__device__ void grid_barrier(u32* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
        __threadfence();
        u32 seen = atomicAdd(bar, add);
        u64 start = global_ns();
        while (((seen ^ load_relaxed(bar)) & 0x80000000u) == 0)
            if (global_ns() - start > STEP_BARRIER_NS) asm volatile("trap;");
        __threadfence();
    }
    __syncthreads();
}

// With `timing` set, block 0 stamps the time at the start and after every barrier, and two
// bare barriers come first so one barrier's cost can be read off (`REALM_CUDA_STEP_TIMING=1`).
__device__ __forceinline__ void stamp(const StepArgs& a, int* k) {
    if (a.timing && blockIdx.x == 0 && threadIdx.x == 0) ((u64*)a.timing)[*k] = global_ns();
    (*k)++;
}

// One row of a weight against the step's input row `in` (cols long, written by other blocks),
// RMS-normalised by `nw` when NORM; with SWIGLU the same row of `ur` too. Every lane gets the
// sums.
template <int T, bool NORM, bool SWIGLU>
__device__ __forceinline__ void row_dot(const u8* wr, const u8* ur, const float* in, const float* nw, int cols,
                                        float eps, float* s, float* su) {
    float acc[MM_TILE], acc_up[MM_TILE], ss[MM_TILE];
#pragma unroll
    for (int t = 0; t < MM_TILE; t++) acc[t] = acc_up[t] = ss[t] = 0.0f;
    // Unrolled so a lane's loads are in flight together (less for gate and up, whose parts
    // take twice the registers).
#pragma unroll(SWIGLU ? 2 : 4)
    for (int i = threadIdx.x % WARP; i < cols / 8; i += WARP)
        matmul_part<T, SWIGLU, NORM, true>(wr, ur, in, nw, cols, 0, 1, i, acc, acc_up, ss);
    float a = warp_sum(acc[0]), u = SWIGLU ? warp_sum(acc_up[0]) : 0.0f;
    if (NORM) {
        float scale = rsqrtf(warp_sum(ss[0]) / cols + eps);
        a *= scale;
        u *= scale;
    }
    *s = a;
    *su = u;
}

template <bool NORM, bool SWIGLU>
__device__ void row_dot_any(int ty, const u8* wr, const u8* ur, const float* in, const float* nw, int cols,
                            float eps, float* s, float* su) {
    switch (ty) {
        case T_F32: row_dot<T_F32, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        case T_Q4_0: row_dot<T_Q4_0, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        case T_Q4_1: row_dot<T_Q4_1, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        case T_Q8_0: row_dot<T_Q8_0, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        case T_Q4_K: row_dot<T_Q4_K, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        case T_Q5_K: row_dot<T_Q5_K, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
        default: row_dot<T_Q6_K, NORM, SWIGLU>(wr, ur, in, nw, cols, eps, s, su); break;
    }
}

__device__ void embed_row_any(const StepWeight& e, int token, int cols, float* out) {
    const u8* row = (const u8*)e.w + (u64)token * e.row_bytes;
    switch (e.ty) {
        case T_F32: embed_row<T_F32>(row, cols, out); break;
        case T_Q4_0: embed_row<T_Q4_0>(row, cols, out); break;
        case T_Q4_1: embed_row<T_Q4_1>(row, cols, out); break;
        case T_Q8_0: embed_row<T_Q8_0>(row, cols, out); break;
        case T_Q4_K: embed_row<T_Q4_K>(row, cols, out); break;
        case T_Q5_K: embed_row<T_Q5_K>(row, cols, out); break;
        default: embed_row<T_Q6_K>(row, cols, out); break;
    }
}

__device__ __forceinline__ const u8* row_of(const StepWeight& w, int r) {
    return (const u8*)w.w + (u64)r * w.row_bytes;
}

// Sends the rows of `w` this warp takes in a phase of `rows` rows towards L2.
__device__ void prefetch_rows(const StepWeight& w, int rows, int first, int stride) {
    int lane = threadIdx.x % WARP;
    for (int r = first; r < rows; r += stride) prefetch_l2(row_of(w, r), w.row_bytes, lane, WARP);
}

// Q, K and V of a layer stacked: rows 0..dim are Q's, then K's, then V's.
__device__ __forceinline__ void qkv_row(const StepLayer& L, const StepArgs& a, int r, const StepWeight** w,
                                        float** out, int* rr) {
    if (r < a.dim) {
        *w = &L.q;
        *out = (float*)a.q;
        *rr = r;
    } else if (r < a.dim + a.kv_dim) {
        *w = &L.k;
        *out = (float*)a.k;
        *rr = r - a.dim;
    } else {
        *w = &L.v;
        *out = (float*)a.v;
        *rr = r - a.dim - a.kv_dim;
    }
}

__device__ void prefetch_qkv(const StepLayer& L, const StepArgs& a, int first, int stride) {
    int lane = threadIdx.x % WARP;
    for (int r = first; r < a.dim + 2 * a.kv_dim; r += stride) {
        const StepWeight* w;
        float* out;
        int rr;
        qkv_row(L, a, r, &w, &out, &rr);
        prefetch_l2(row_of(*w, rr), w->row_bytes, lane, WARP);
    }
}

// The host checks the shapes (dims multiples of 32, attention within the AT_* limits, the gate
// and up weights of one format) and that the grid is one co-resident block per multiprocessor.
extern "C" __global__ void __launch_bounds__(STEP_THREADS, 1) decode_step(const StepArgs a) {
    int lane = threadIdx.x % WARP;
    int gw = blockIdx.x * STEP_WARPS + threadIdx.x / WARP, warps = gridDim.x * STEP_WARPS;
    u32* bar = (u32*)a.barrier;
    float *x = (float*)a.x, *att = (float*)a.att, *h = (float*)a.h;
    const StepLayer* layers = (const StepLayer*)a.layers;
    float s, su;
    int k = 0;
    stamp(a, &k);
    if (a.timing) {
        grid_barrier(bar);
        stamp(a, &k);
        grid_barrier(bar);
        stamp(a, &k);
    }

    if (blockIdx.x == 0) embed_row_any(a.embd, a.token, a.dim, x);
    prefetch_qkv(layers[0], a, gw, warps);
    grid_barrier(bar);
    stamp(a, &k);

    for (int l = 0; l < a.n_layer; l++) {
        const StepLayer& L = layers[l];
        for (int r = gw; r < a.dim + 2 * a.kv_dim; r += warps) {
            const StepWeight* w;
            float* out;
            int rr;
            qkv_row(L, a, r, &w, &out, &rr);
            row_dot_any<true, false>(w->ty, row_of(*w, rr), 0, x, (const float*)L.attn_norm, a.dim, a.eps, &s, &su);
            if (lane == 0) out[rr] = s;
        }
        grid_barrier(bar);
        stamp(a, &k);

        // RoPE, the KV append and attention: (KV head, run) pairs spread over the blocks.
        for (int vb = blockIdx.x; vb < a.sh.n_kv_head * a.sh.splits; vb += gridDim.x) {
            attend<STEP_THREADS, float>((const float*)a.q, (const float*)L.k_cache, (const float*)L.v_cache, 0, a.pos, 0,
                                 vb / a.sh.splits, vb % a.sh.splits, a.sh, att, (float*)a.partial,
                                 (u32*)a.arrived, a.rope);
            __syncthreads();
        }
        prefetch_rows(L.o, a.dim, gw, warps);
        grid_barrier(bar);
        stamp(a, &k);

        for (int r = gw; r < a.dim; r += warps) {
            row_dot_any<false, false>(L.o.ty, row_of(L.o, r), 0, att, 0, a.dim, 0.0f, &s, &su);
            if (lane == 0) x[r] = __ldcg(x + r) + s;
        }
        prefetch_rows(L.gate, a.ffn, gw, warps);
        prefetch_rows(L.up, a.ffn, gw, warps);
        grid_barrier(bar);
        stamp(a, &k);

        for (int r = gw; r < a.ffn; r += warps) {
            row_dot_any<true, true>(L.gate.ty, row_of(L.gate, r), row_of(L.up, r), x, (const float*)L.ffn_norm,
                                    a.dim, a.eps, &s, &su);
            if (lane == 0) h[r] = s / (1.0f + expf(-s)) * su;
        }
        prefetch_rows(L.down, a.dim, gw, warps);
        grid_barrier(bar);
        stamp(a, &k);

        for (int r = gw; r < a.dim; r += warps) {
            row_dot_any<false, false>(L.down.ty, row_of(L.down, r), 0, h, 0, a.ffn, 0.0f, &s, &su);
            if (lane == 0) x[r] = __ldcg(x + r) + s;
        }
        if (l + 1 < a.n_layer) prefetch_qkv(layers[l + 1], a, gw, warps);
        else prefetch_rows(a.head, a.vocab, gw, warps);
        grid_barrier(bar);
        stamp(a, &k);
    }

    float* logits = (float*)a.logits;
    for (int r = gw; r < a.vocab; r += warps) {
        row_dot_any<true, false>(a.head.ty, row_of(a.head, r), 0, x, (const float*)a.out_norm, a.dim, a.eps, &s, &su);
        if (lane == 0) logits[r] = s;
    }
    if (a.timing) {
        grid_barrier(bar);
        stamp(a, &k);
    }
}
