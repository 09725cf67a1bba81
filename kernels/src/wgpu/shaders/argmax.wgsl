// Greedy sampling on the device: out[r] = the index of row r's largest value, one workgroup per
// row. Ties go to the lower index; NaN and -inf are never chosen (told apart by their bits, as
// WGSL lets comparisons with them go either way), and a row with nothing else gives NONE. The
// same answer as the host's `argmax`.

struct Params {
    row_len: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

fn choosable(v: f32) -> bool {
    let bits = bitcast<u32>(v);
    return (bits & 0x7fffffffu) <= 0x7f800000u && bits != 0xff800000u;
}

// Whether candidate (v, i) beats (bv, bi): larger, or as large with a lower index.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if i == NONE {
        return false;
    }
    if bi == NONE {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.x + wid.y * nwg.x;
    if r >= p.rows {
        return;
    }
    let o = r * p.row_len;
    var bv = 0.0;
    var bi = NONE;
    for (var i = lid; i < p.row_len; i += WG) {
        let v = x[o + i];
        if choosable(v) && (bi == NONE || v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride && beats(best_v[lid + stride], best_i[lid + stride], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + stride];
            best_i[lid] = best_i[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[r] = best_i[0];
    }
}
