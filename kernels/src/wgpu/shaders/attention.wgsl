// Causal attention of one sequence's query rows against its KV cache, one workgroup per
// (query row, head). Positions are taken WG at a time: each thread scores one, then the
// running maximum, normaliser and output (each thread owns head dims lid + WG * j) are
// rescaled as in online softmax.

struct Params {
    // First query row of the sequence in q and out.
    q_row: u32,
    n: u32,
    first_pos: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
// cache:begin
// The KV cache in f32 (cache_f16.wgsl replaces this region for an f16 cache).
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;

fn key(i: u32) -> f32 {
    return k[i];
}

fn value(i: u32) -> f32 {
    return v[i];
}
// cache:end
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
// head_dim <= WG * DIMS (checked on the host).
const DIMS: u32 = 4u;
// Below any score: exp(NONE - max) is 0 without the infinities of -inf - -inf.
const NONE: f32 = -3.0e38;

var<workgroup> qh: array<f32, 256>; // WG * DIMS
var<workgroup> weights: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn reduce_max(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = wid.x + wid.y * nwg.x;
    if id >= p.n * p.n_head {
        return;
    }
    let t = id / p.n_head;
    let h = id % p.n_head;
    let hd = p.head_dim;
    let q_len = p.n_head * hd;
    let kv_len = p.n_kv_head * hd;
    let kv_off = (h / (p.n_head / p.n_kv_head)) * hd;
    let qo = (p.q_row + t) * q_len + h * hd;
    for (var i = lid; i < hd; i += WG) {
        qh[i] = q[qo + i];
    }
    workgroupBarrier();

    let visible = p.first_pos + t + 1u;
    var m = NONE;
    var l = 0.0;
    var acc: array<f32, 4>; // DIMS
    for (var c0 = 0u; c0 < visible; c0 += WG) {
        let pos = c0 + lid;
        var s = NONE;
        if pos < visible {
            let ko = pos * kv_len + kv_off;
            var d = 0.0;
            for (var i = 0u; i < hd; i++) {
                d += qh[i] * key(ko + i);
            }
            s = d * p.scale;
        }
        let m_new = max(m, reduce_max(lid, s));
        let corr = exp(m - m_new);
        var e = 0.0;
        if pos < visible {
            e = exp(s - m_new);
        }
        weights[lid] = e;
        l = l * corr + reduce_sum(lid, e);
        let cnt = min(WG, visible - c0);
        for (var j = 0u; j < DIMS; j++) {
            let d = lid + j * WG;
            if d < hd {
                var a = acc[j] * corr;
                for (var i = 0u; i < cnt; i++) {
                    a += weights[i] * value((c0 + i) * kv_len + kv_off + d);
                }
                acc[j] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var j = 0u; j < DIMS; j++) {
        let d = lid + j * WG;
        if d < hd {
            out[qo + d] = acc[j] / l;
        }
    }
}
