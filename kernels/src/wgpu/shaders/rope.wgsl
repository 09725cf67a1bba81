// RoPE: rotates the pairs of each head of row r by that row's angles, one thread per pair.
// The cosines and sines come from the host (computed in f64 as the CPU backend does), so long
// positions lose no precision here.

struct Params {
    row_len: u32,
    head_dim: u32,
    // Pairs rotated per head: n_rot / 2.
    pairs: u32,
    // 1: pairs (i, i + pairs) (NeoX); 0: adjacent pairs (2i, 2i + 1).
    neox: u32,
    // rows * heads * pairs
    count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
// (cos, sin) of pair i at row r: cs[r * pairs + i].
@group(0) @binding(2) var<storage, read> cs: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    if i >= p.count {
        return;
    }
    let heads = p.row_len / p.head_dim;
    let pair = i % p.pairs;
    let head = (i / p.pairs) % heads;
    let row = i / (p.pairs * heads);
    let o = row * p.row_len + head * p.head_dim;
    var a = o + 2u * pair;
    var b = a + 1u;
    if p.neox != 0u {
        a = o + pair;
        b = a + p.pairs;
    }
    let c = cs[row * p.pairs + pair];
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c.x - x1 * c.y;
    x[b] = x0 * c.y + x1 * c.x;
}
