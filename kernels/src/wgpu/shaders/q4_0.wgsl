// Q4_0 units for matmul.wgsl: block_q4_0 (18 bytes) is one unit, x = d * (q - 8).

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + u * 18u;
    let d = half_at(b);
    var v: array<vec4<f32>, 8>;
    // Element j in the low nibble of byte j, element j + 16 in its high nibble.
    for (var k = 0u; k < 4u; k++) {
        let q = word_at(b + 2u + 4u * k);
        v[k] = d * (fields(q, 0u, 15u) - 8.0);
        v[k + 4u] = d * (fields(q, 4u, 15u) - 8.0);
    }
    return v;
}
// unit:end
