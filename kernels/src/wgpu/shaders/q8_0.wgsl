// Q8_0 units for matmul.wgsl: block_q8_0 (34 bytes) is one unit, x = d * q, q signed.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + u * 34u;
    let d = half_at(b);
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        let q = bitcast<i32>(word_at(b + 2u + 4u * k));
        let s = vec4<f32>(
            f32(extractBits(q, 0u, 8u)),
            f32(extractBits(q, 8u, 8u)),
            f32(extractBits(q, 16u, 8u)),
            f32(extractBits(q, 24u, 8u)),
        );
        v[k] = s * d;
    }
    return v;
}
// unit:end
