// Q4_K units for matmul.wgsl: a 144-byte block_q4_K holds 8 units (groups of 32),
// x = d * sc * q - dmin * m.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + (u / 8u) * 144u;
    let j = u % 8u;
    let dm = scale_min(b + 4u, j, half_at(b), half_at(b + 2u));
    // Groups 2c and 2c + 1 take the low and high nibbles of qs[32c ..].
    let qs = b + 16u + 32u * (j / 2u);
    let shift = 4u * (j % 2u);
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        v[k] = dm.x * fields(word_at(qs + 4u * k), shift, 15u) - dm.y;
    }
    return v;
}
// unit:end
