// Realm's WGSL kernels: the CUDA backend's kernel set (kernels/src/cuda/kernels.cu) for wgpu
// (Vulkan, Metal, DX12, browsers' WebGPU). Activations are f32 storage buffers, row-major.
// Weights keep their GGML blocks; WGSL has no 8- or 16-bit storage by default, so rows are
// padded to whole u32 words at load and bytes are read out of words. Every entry point takes
// one uniform `Params` (only the fields it names are meaningful).

struct Params {
    // Weight format (T_* below), rows, cols, and u32 words per padded weight row.
    ty: u32,
    rows: u32,
    cols: u32,
    row_words: u32,
    // Input rows of the op and where this dispatch starts (large grids are split).
    n: u32,
    row_offset: u32,
    // rms_norm: epsilon; attention: 1/sqrt(head_dim).
    eps: f32,
    scale: f32,
    // Attention and RoPE shapes.
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    n_rot: u32,
    // Attention: this sequence's first position and first row; RoPE: pairing (1 = neox).
    first_pos: u32,
    q_row: u32,
    neox: u32,
    ctx: u32,
}

const T_F32: u32 = 0u;
const T_Q4_0: u32 = 1u;
const T_Q4_1: u32 = 2u;
const T_Q8_0: u32 = 3u;
const T_Q4_K: u32 = 4u;
const T_Q5_K: u32 = 5u;
const T_Q6_K: u32 = 6u;

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Attention: values cache (keys come in `w` as f32 bits); embed: token ids; rope: cos/sin.
@group(0) @binding(4) var<storage, read> aux: array<u32>;

var<workgroup> red: array<f32, WG>;

fn byte_at(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

// IEEE binary16 at byte b, decoded with integer ops (unpack2x16float needs a capability not
// every adapter grants).
fn half_at(b: u32) -> f32 {
    let h = byte_at(b) | (byte_at(b + 1u) << 8u);
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    var v = bitcast<f32>(((e + 112u) << 23u) | (m << 13u));
    if (e == 0u) {
        v = f32(m) * 5.9604645e-8;
    }
    if (e == 31u) {
        v = bitcast<f32>(0x7f800000u | (m << 13u));
    }
    return select(v, -v, (h & 0x8000u) != 0u);
}

fn as_i8(b: u32) -> f32 {
    return select(f32(b), f32(b) - 256.0, b >= 128u);
}

// The 6-bit scale (sm.x) and min (sm.y) of sub-block j of a Q4_K/Q5_K super-block whose scales
// start at byte s (`get_scale_min_k4`).
fn scale_min_k4(j: u32, s: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(s + j) & 63u), f32(byte_at(s + j + 4u) & 63u));
    }
    let sc = (byte_at(s + j + 4u) & 0xfu) | ((byte_at(s + j - 4u) >> 6u) << 4u);
    let m = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// Element i of the weight row starting at byte `row`.
fn dq(row: u32, i: u32) -> f32 {
    switch P.ty {
        case 1u: {
            let b = row + (i / 32u) * 18u;
            let j = i % 32u;
            let q = byte_at(b + 2u + (j % 16u));
            return (f32(select(q & 0xfu, q >> 4u, j >= 16u)) - 8.0) * half_at(b);
        }
        case 2u: {
            let b = row + (i / 32u) * 20u;
            let j = i % 32u;
            let q = byte_at(b + 4u + (j % 16u));
            return f32(select(q & 0xfu, q >> 4u, j >= 16u)) * half_at(b) + half_at(b + 2u);
        }
        case 3u: {
            let b = row + (i / 32u) * 34u;
            return as_i8(byte_at(b + 2u + (i % 32u))) * half_at(b);
        }
        case 4u: {
            let b = row + (i / 256u) * 144u;
            let j = (i % 256u) / 32u;
            let l = i % 32u;
            let sm = scale_min_k4(j, b + 4u);
            let q = (byte_at(b + 16u + 32u * (j / 2u) + l) >> (4u * (j % 2u))) & 0xfu;
            return half_at(b) * sm.x * f32(q) - half_at(b + 2u) * sm.y;
        }
        case 5u: {
            let b = row + (i / 256u) * 176u;
            let j = (i % 256u) / 32u;
            let l = i % 32u;
            let sm = scale_min_k4(j, b + 4u);
            let lo = (byte_at(b + 48u + 32u * (j / 2u) + l) >> (4u * (j % 2u))) & 0xfu;
            let hi = (byte_at(b + 16u + l) >> j) & 1u;
            return half_at(b) * sm.x * f32(lo + 16u * hi) - half_at(b + 2u) * sm.y;
        }
        case 6u: {
            let b = row + (i / 256u) * 210u;
            let j = (i % 256u) / 32u;
            let l = i % 32u;
            let hb = j / 4u;
            let k = j % 4u;
            let ql = byte_at(b + 64u * hb + 32u * (k & 1u) + l);
            let qh = byte_at(b + 128u + 32u * hb + l);
            let q = ((ql >> (4u * (k >> 1u))) & 0xfu) | (((qh >> (2u * k)) & 3u) << 4u);
            let sc = as_i8(byte_at(b + 192u + 8u * hb + 2u * k + l / 16u));
            return half_at(b + 208u) * sc * (f32(q) - 32.0);
        }
        default: {
            return bitcast<f32>(w[row / 4u + i]);
        }
    }
}

// Sums `red` over the workgroup; every invocation gets the total.
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// out[t, r] = x[t, :] . W[r, :] for weight row r = wg.x + row_offset and input rows
// t in [wg.y * 4, wg.y * 4 + 4): each dequantized element is used for four input rows.
@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + P.row_offset;
    let t0 = wg.y * 4u;
    let row = r * P.row_words * 4u;
    var acc = vec4<f32>(0.0);
    for (var c = lid; c < P.cols; c = c + WG) {
        let v = dq(row, c);
        for (var t = 0u; t < 4u; t = t + 1u) {
            if (t0 + t < P.n) {
                acc[t] = acc[t] + v * x[(t0 + t) * P.cols + c];
            }
        }
    }
    for (var t = 0u; t < 4u; t = t + 1u) {
        let s = reduce_sum(lid, acc[t]);
        if (lid == 0u && t0 + t < P.n) {
            out[(t0 + t) * P.rows + r] = s;
        }
    }
}

// out[i, :] = table[ids[i], :] (ids in `aux`).
@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wg.x + P.row_offset;
    let row = aux[i] * P.row_words * 4u;
    for (var c = lid; c < P.cols; c = c + WG) {
        out[i * P.cols + c] = dq(row, c);
    }
}

// RMSNorm of row wg.x of x times the weight (f32 bits in `w`).
@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + P.row_offset;
    var ss = 0.0;
    for (var c = lid; c < P.cols; c = c + WG) {
        let v = x[r * P.cols + c];
        ss = ss + v * v;
    }
    let total = reduce_sum(lid, ss);
    let scale = 1.0 / sqrt(total / f32(P.cols) + P.eps);
    for (var c = lid; c < P.cols; c = c + WG) {
        out[r * P.cols + c] = x[r * P.cols + c] * scale * bitcast<f32>(w[c]);
    }
}

// out[i] = silu(out[i]) * x[i]
@compute @workgroup_size(64)
fn silu_mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + P.row_offset) * WG + lid;
    if (i < P.n) {
        let g = out[i];
        out[i] = g / (1.0 + exp(-g)) * x[i];
    }
}

// out[i] += x[i]
@compute @workgroup_size(64)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + P.row_offset) * WG + lid;
    if (i < P.n) {
        out[i] = out[i] + x[i];
    }
}

// Rotates every head of row wg.x of `out` (rows of P.cols) by the cosines and sines in `aux`
// (f32 bits, n_rot/2 (cos, sin) pairs per row, computed on the host in f64 as on the CPU).
@compute @workgroup_size(64)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + P.row_offset;
    let hb = P.n_rot / 2u;
    let heads = P.cols / P.head_dim;
    for (var t = lid; t < heads * hb; t = t + WG) {
        let h = t / hb;
        let i = t % hb;
        let c = bitcast<f32>(aux[(r * hb + i) * 2u]);
        let s = bitcast<f32>(aux[(r * hb + i) * 2u + 1u]);
        let base = r * P.cols + h * P.head_dim;
        let a = base + select(2u * i, i, P.neox == 1u);
        let b = base + select(2u * i + 1u, i + hb, P.neox == 1u);
        let x0 = out[a];
        let x1 = out[b];
        out[a] = x0 * c - x1 * s;
        out[b] = x0 * s + x1 * c;
    }
}

// Causal attention of one sequence's query row (P.q_row + wg.x, at position P.first_pos + wg.x)
// and head wg.y over its cache: keys in `w` (f32 bits), values in `aux` (f32 bits), queries in
// `x`. Scores go to `scratch` (P.ctx per (row, head)), then the softmax weights, then the
// weighted sum of value rows, a dimension per invocation. GQA: head h reads KV head
// h / (n_head / n_kv_head).
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + P.row_offset;
    let h = wg.y;
    let d = P.head_dim;
    let g = h / (P.n_head / P.n_kv_head);
    let kv_len = P.n_kv_head * d;
    let q = (P.q_row + t) * P.n_head * d + h * d;
    let visible = P.first_pos + t + 1u;
    let sbase = (t * P.n_head + h) * P.ctx;
    var mx = -3.4e38;
    for (var p = lid; p < visible; p = p + WG) {
        var s = 0.0;
        let k = p * kv_len + g * d;
        for (var i = 0u; i < d; i = i + 1u) {
            s = s + x[q + i] * bitcast<f32>(w[k + i]);
        }
        s = s * P.scale;
        scratch[sbase + p] = s;
        mx = max(mx, s);
    }
    let m = reduce_max(lid, mx);
    var sum = 0.0;
    for (var p = lid; p < visible; p = p + WG) {
        let e = exp(scratch[sbase + p] - m);
        scratch[sbase + p] = e;
        sum = sum + e;
    }
    let total = reduce_sum(lid, sum);
    storageBarrier();
    for (var i = lid; i < d; i = i + WG) {
        var acc = 0.0;
        for (var p = 0u; p < visible; p = p + 1u) {
            acc = acc + scratch[sbase + p] * bitcast<f32>(aux[p * kv_len + g * d + i]);
        }
        out[q + i] = acc / total;
    }
}
