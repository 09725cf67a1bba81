// Q5_K units for matmul.wgsl: a 176-byte block_q5_K holds 8 units (groups of 32), as Q4_K
// with a fifth bit per element: bit j of qh[i] for element i of group j.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + (u / 8u) * 176u;
    let j = u % 8u;
    let dm = scale_min(b + 4u, j, half_at(b), half_at(b + 2u));
    let qs = b + 48u + 32u * (j / 2u);
    let shift = 4u * (j % 2u);
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        let q = fields(word_at(qs + 4u * k), shift, 15u) + 16.0 * fields(word_at(b + 16u + 4u * k), j, 1u);
        v[k] = dm.x * q - dm.y;
    }
    return v;
}
// unit:end
