//! Times the CPU backend's packed matmuls alone over the default model's weight shapes (30
//! layers of Q, K, V, O, gate, up and down, then the output head; Q4_1, with the activations
//! each takes in the fast precision) for batches of `N` activation rows. Batch 1 reads every
//! weight from memory; a larger batch reuses each weight, so how the time grows with `N`
//! shows where batched decode stops being bound by memory (bench/RESULTS.md).
//!
//! `cargo run --release -p realm-kernels --example matmul_bench -- [N,N,...]`

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use realm_kernels::cpu::{Activations, Cpu};
use realm_kernels::quant::quantize_row;
use realm_kernels::{Backend, GgmlType, Inputs, QTensor, SharedBytes};

const LAYERS: usize = 30;
const DIM: usize = 576;
const KV: usize = 192;
const FFN: usize = 1536;
const VOCAB: usize = 49152;
const ROUNDS: usize = 15;

/// A Q4_1 matrix of `rows × cols` with the same values in every row.
fn weight(rows: usize, cols: usize) -> Result<QTensor, Box<dyn Error>> {
    let ty = GgmlType::Q4_1;
    let row_bytes = ty.byte_size(cols as u64)?.ok_or("whole blocks")? as usize;
    let values: Vec<f32> = (0..cols).map(|i| (i * 7919 % 2003) as f32 / 2003.0 - 0.5).collect();
    let mut bytes = vec![0u8; rows * row_bytes];
    for row in bytes.chunks_mut(row_bytes) {
        quantize_row(ty, &values, row)?;
    }
    let len = bytes.len();
    Ok(QTensor::new(ty, rows, cols, SharedBytes::new(Arc::new(bytes), 0, len).ok_or("bytes")?)?)
}

fn main() -> Result<(), Box<dyn Error>> {
    let batches: Vec<usize> = match std::env::args().nth(1) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 8, 1, 8],
    };
    if batches.contains(&0) {
        return Err("batch sizes must be at least 1".into());
    }
    let cpu = Cpu::new(0, Activations::Q8)?;
    let layer = [
        (DIM, DIM, Inputs::Sensitive),
        (KV, DIM, Inputs::Sensitive),
        (KV, DIM, Inputs::Sensitive),
        (DIM, DIM, Inputs::Robust),
        (FFN, DIM, Inputs::Robust),
        (FFN, DIM, Inputs::Robust),
        (DIM, FFN, Inputs::Sensitive),
    ];
    let mut weights = Vec::new();
    for (rows, cols, inputs) in layer.iter().cycle().take(LAYERS * layer.len()).chain([&(VOCAB, DIM, Inputs::Robust)]) {
        weights.push((cpu.load_weight(&weight(*rows, *cols)?, *inputs)?, *rows, *cols));
    }
    println!("packed Q4_1 matmuls of the default model's shapes, {} threads", cpu.threads());
    for n in batches {
        let x: Vec<f32> = (0..n * FFN).map(|i| (i as f32 * 0.37).sin()).collect();
        let inputs: Vec<Vec<f32>> = [DIM, FFN].iter().map(|&cols| x[..n * cols].to_vec()).collect();
        let mut outs: Vec<Vec<f32>> = weights.iter().map(|(_, rows, _)| vec![0.0; n * rows]).collect();
        let mut times = Vec::new();
        // One pass more than timed: the first packs the weights.
        for round in 0..=ROUNDS {
            let start = Instant::now();
            for ((w, _, cols), out) in weights.iter().zip(&mut outs) {
                cpu.matmul(w, &inputs[usize::from(*cols == FFN)], n, out)?;
            }
            if round > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "batch {n}: ms per pass: median {:.3}, min {:.3}, max {:.3} over {ROUNDS}",
            times[ROUNDS / 2],
            times[0],
            times[ROUNDS - 1]
        );
    }
    Ok(())
}
