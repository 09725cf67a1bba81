// Matrix times activations and embedding lookup for one weight format. This file is the F32
// module; every other format's module is this one with the region between the `unit` markers
// replaced by that format's file (see source.rs). A weight row is read in units of 32
// elements, dequantized in registers by `unit`.
//
// matmul: out[t, r] = dot(x[t, :], W[r, :]) for the first n rows of x. One workgroup per
// (weight row, tile of TILE input rows): the threads split the row's units, then reduce.
// embed: out[i, :] = W[ids[i], :], one workgroup per id.

struct Params {
    // Weight rows (outputs per input row).
    rows: u32,
    cols: u32,
    // Input rows (matmul) or ids (embed).
    n: u32,
    row_bytes: u32,
    // Workgroups that have work: rows * ceil(n / TILE) (matmul), n (embed).
    count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;

const WG: u32 = 64u;
const TILE: u32 = 8u;

// unit:begin
// F32: the row's elements as they are. `base` is the row's first byte.
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let i = (base >> 2u) + u * 32u;
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        let j = i + 4u * k;
        v[k] = vec4<f32>(bitcast<f32>(w[j]), bitcast<f32>(w[j + 1u]), bitcast<f32>(w[j + 2u]), bitcast<f32>(w[j + 3u]));
    }
    return v;
}
// unit:end

var<workgroup> partial: array<f32, 512>; // WG * TILE

@compute @workgroup_size(64)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = wid.x + wid.y * nwg.x;
    if id >= p.count {
        return;
    }
    let r = id % p.rows;
    let t0 = (id / p.rows) * TILE;
    let nt = min(TILE, p.n - t0);
    let units = p.cols / 32u;
    let base = r * p.row_bytes;
    var acc: array<f32, 8>; // TILE
    for (var u = lid; u < units; u += WG) {
        let wv = unit(base, u);
        for (var t = 0u; t < nt; t++) {
            let xi = ((t0 + t) * p.cols + u * 32u) / 4u;
            var s = vec4<f32>(0.0);
            for (var k = 0u; k < 8u; k++) {
                s += wv[k] * x[xi + k];
            }
            acc[t] += (s.x + s.y) + (s.z + s.w);
        }
    }
    for (var t = 0u; t < TILE; t++) {
        partial[t * WG + lid] = acc[t];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            for (var t = 0u; t < TILE; t++) {
                partial[t * WG + lid] += partial[t * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if lid < nt {
        out[(t0 + lid) * p.rows + r] = partial[lid * WG];
    }
}

@compute @workgroup_size(64)
fn embed(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wid.x + wid.y * nwg.x;
    if i >= p.count {
        return;
    }
    let base = ids[i] * p.row_bytes;
    let units = p.cols / 32u;
    for (var u = lid; u < units; u += WG) {
        let v = unit(base, u);
        let o = i * p.cols + u * 32u;
        for (var k = 0u; k < 8u; k++) {
            out[o + 4u * k] = v[k].x;
            out[o + 4u * k + 1u] = v[k].y;
            out[o + 4u * k + 2u] = v[k].z;
            out[o + 4u * k + 3u] = v[k].w;
        }
    }
}
