//! Times the CPU backend's attention alone, in the default model's shape (9 query heads
//! sharing 3 KV heads of 64, 30 layers), on caches filled by `kv_write`: a batched decode
//! step (`SEQS` sequences, one new token each after `CTX` cached positions) or a prefill of
//! `CTX` tokens. Without the rest of a forward pass around it the numbers move less than
//! `realm bench`'s, which makes layout and kernel changes measurable (bench/RESULTS.md).
//!
//! `cargo run --release -p realm-kernels --example attention_bench -- [decode|prefill] [CTX] [SEQS] [exact|fast]`

use std::error::Error;
use std::time::Instant;

use realm_kernels::backend::{AttentionShape, Backend, KvLayer, SeqRows};
use realm_kernels::cpu::{Activations, Cpu};

const LAYERS: usize = 30;
const SHAPE: AttentionShape = AttentionShape { n_head: 9, n_kv_head: 3, head_dim: 64 };
const ROUNDS: usize = 5;
const STEPS: usize = 20;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let prefill = match args.next().as_deref() {
        None | Some("decode") => false,
        Some("prefill") => true,
        Some(other) => return Err(format!("unknown mode {other:?}: decode or prefill").into()),
    };
    let ctx: usize = args.next().map_or(Ok(192), |a| a.parse())?;
    let seqs: usize = if prefill { 1 } else { args.next().map_or(Ok(8), |a| a.parse())? };
    let activations = match args.next().as_deref() {
        None | Some("fast") => Activations::Q8,
        Some("exact") => Activations::F32,
        Some(other) => return Err(format!("unknown precision {other:?}: exact or fast").into()),
    };
    if ctx == 0 || seqs == 0 {
        return Err("CTX and SEQS must be at least 1".into());
    }
    let cpu = Cpu::new(0, activations)?;
    let (q_len, kv_len) = (SHAPE.n_head * SHAPE.head_dim, SHAPE.n_kv_head * SHAPE.head_dim);
    let value = |i: usize, m: f32| ((i as f32) * m).sin();
    let (k, v): (Vec<f32>, Vec<f32>) = (0..ctx * kv_len).map(|i| (3.0 * value(i, 1.3), value(i, 0.4))).unzip();
    let all = SeqRows { row: 0, n: ctx, first_pos: 0 };
    let mut caches = Vec::new();
    for _ in 0..LAYERS * seqs {
        let mut cache = KvLayer { k: Vec::new(), v: Vec::new() };
        cpu.kv_write(cache.as_mut(), &k, &v, all, kv_len)?;
        caches.push(cache);
    }
    let rows: Vec<SeqRows> =
        if prefill { vec![all] } else { (0..seqs).map(|s| SeqRows { row: s, n: 1, first_pos: ctx - 1 }).collect() };
    let q_rows = rows.iter().map(|r| r.n).sum::<usize>();
    let q: Vec<f32> = (0..q_rows * q_len).map(|i| value(i, 0.7)).collect();
    let mut out = vec![0.0f32; q_rows * q_len];
    let mode = if prefill { "prefill" } else { "decode" };
    println!("attention, {mode}: {seqs} sequences, {ctx} positions, {LAYERS} layers, {} threads", cpu.threads());
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..STEPS {
            for layer in caches.chunks(seqs) {
                let seqs: Vec<_> = layer.iter().zip(&rows).map(|(c, r)| (c.as_ref(), *r)).collect();
                cpu.attention_many(&q, &seqs, SHAPE, &mut out)?;
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "ms per step (all layers): median {:.3}, min {:.3}, max {:.3} over {ROUNDS} rounds of {STEPS}",
        times[ROUNDS / 2],
        times[0],
        times[ROUNDS - 1]
    );
    Ok(())
}
