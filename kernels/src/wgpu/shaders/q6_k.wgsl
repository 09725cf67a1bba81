// Q6_K units for matmul.wgsl: a 210-byte block_q6_K holds 8 units of 32,
// x = d * sc * (q - 32) with a signed 8-bit scale per 16 elements.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
fn unit(base: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = base + (u / 8u) * 210u;
    let g = u % 8u;
    // Outputs 128h + 32l + i: low nibble (l < 2) or high nibble (l >= 2) of
    // ql[64h + 32(l % 2) + i], and 2-bit field l of qh[32h + i].
    let h = g / 4u;
    let l = g % 4u;
    let ql = b + 64u * h + 32u * (l % 2u);
    let qh = b + 128u + 32u * h;
    let d = half_at(b + 208u);
    let sc = b + 192u + 8u * h + 2u * l;
    let dl0 = d * f32(extractBits(bitcast<i32>(byte_at(sc)), 0u, 8u));
    let dl1 = d * f32(extractBits(bitcast<i32>(byte_at(sc + 1u)), 0u, 8u));
    var v: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        let q = fields(word_at(ql + 4u * k), 4u * (l / 2u), 15u) + 16.0 * fields(word_at(qh + 4u * k), 2u * l, 3u);
        v[k] = select(dl1, dl0, k < 4u) * (q - 32.0);
    }
    return v;
}
// unit:end
