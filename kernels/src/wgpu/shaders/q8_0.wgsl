// Q8_0 units for matmul.wgsl: block_q8_0 (34 bytes) is one unit, x = d * q, q signed.

// Weights are GGML blocks read as little-endian u32 words; blocks need not start on a word.
@group(0) @binding(1) var<storage, read> w: array<u32>;

// unit:begin
// The 4 bytes at byte offset `off`, whatever its alignment (the buffer has a spare word at
// the end, so the second read stays inside it).
fn word_at(off: u32) -> u32 {
    let i = off >> 2u;
    let sh = (off & 3u) * 8u;
    if sh == 0u {
        return w[i];
    }
    return (w[i] >> sh) | (w[i + 1u] << (32u - sh));
}

fn byte_at(off: u32) -> u32 {
    return (w[off >> 2u] >> ((off & 3u) * 8u)) & 0xffu;
}

// The f16 at an even byte offset, converted exactly by its bits (unpack2x16float needs a
// capability some adapters lack).
fn half_at(off: u32) -> f32 {
    let h = (w[off >> 2u] >> ((off & 2u) * 8u)) & 0xffffu;
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if exp == 0u {
        // Zero or subnormal: man * 2^-24.
        return bitcast<f32>(sign | bitcast<u32>(f32(man) * 5.9604645e-8));
    }
    if exp == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (man << 13u));
    }
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}

// Byte e of each of 4 words as f32: bits `shift + 8e ..` masked.
fn fields(q: u32, shift: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>(
        f32((q >> shift) & mask),
        f32((q >> (shift + 8u)) & mask),
        f32((q >> (shift + 16u)) & mask),
        f32((q >> (shift + 24u)) & mask),
    );
}

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
