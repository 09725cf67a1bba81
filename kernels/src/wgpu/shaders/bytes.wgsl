// Byte-level reads of GGML blocks (and the K-quants' packed scales) for the quantized formats'
// `unit` functions: source.rs puts this into every matmul module, whose `w: array<u32>` holds
// the weights.

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
