// Q4_1 units for matmul.wgsl: block_q4_1 (20 bytes) is one unit, x = d * q + m.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + u * 20u;
    let d = half_at(b);
    let m = half_at(b + 2u);
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 4u; k++) {
        let q = word_at(b + 4u + 4u * k);
        v[k] = d * fields(q, 0u, 15u) + m;
        v[k + 4u] = d * fields(q, 4u, 15u) + m;
    }
    return v;
}
// unit:end
