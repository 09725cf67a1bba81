// Appends rows of keys and values to an f16 cache (two halves to a word, the lower element in
// the low half, as unpack2x16float reads them): word i of the run takes elements 2i, 2i + 1.

struct Params {
    // First element of the run in k and v (even).
    src: u32,
    // First word of the run in the caches.
    dst: u32,
    words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    if i >= p.words {
        return;
    }
    let s = p.src + 2u * i;
    k_cache[p.dst + i] = pack2x16float(vec2<f32>(k[s], k[s + 1u]));
    v_cache[p.dst + i] = pack2x16float(vec2<f32>(v[s], v[s + 1u]));
}
