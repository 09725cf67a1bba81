// Q4_K units for matmul.wgsl: a 144-byte block_q4_K holds 8 units (groups of 32),
// x = d * sc * q - dmin * m.

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

// The 6-bit scale and min of group j of a Q4_K/Q5_K super-block whose 12 scale bytes start
// at `s` (get_scale_min_k4), times d and dmin.
fn scale_min(s: u32, j: u32, d: f32, dmin: f32) -> vec2<f32> {
    var sc: u32;
    var mn: u32;
    if j < 4u {
        sc = byte_at(s + j) & 63u;
        mn = byte_at(s + j + 4u) & 63u;
    } else {
        sc = (byte_at(s + j + 4u) & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u);
        mn = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    }
    return vec2<f32>(d * f32(sc), dmin * f32(mn));
}

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
