// cache:begin
// The KV cache in f16, two halves to a word (kv_write_f16.wgsl writes them).
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;

fn key(i: u32) -> f32 {
    return unpack2x16float(k[i >> 1u])[i & 1u];
}

fn value(i: u32) -> f32 {
    return unpack2x16float(v[i >> 1u])[i & 1u];
}
// cache:end
