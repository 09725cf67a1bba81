//! Prints how far a precision's logits are from the float64 reference
//! (`shared/golden/reference-f64.jsonl`): the numbers behind docs/precision.md.
//!
//! `cargo run --release -p realm-engine --example precision_report -- MODEL.gguf [exact|fast]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use realm_engine::{Engine, EngineOptions, Precision};
use serde_json::Value;

fn ids(v: &Value) -> Result<Vec<u32>> {
    v.as_array().context("id array")?.iter().map(|x| x.as_u64().map(|i| i as u32).context("id")).collect()
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().context("usage: precision_report MODEL.gguf [exact|fast]")?);
    let precision = match args.next().as_deref() {
        None | Some("fast") => Precision::Fast,
        Some("exact") => Precision::Exact,
        Some(other) => bail!("unknown precision {other:?}"),
    };
    let engine = Engine::load(&model, &EngineOptions { precision, ..EngineOptions::default() })?;
    let vocab = engine.config().vocab_size;
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/reference-f64.jsonl");
    println!("{precision:?}: |logit - reference| over the reference's top ids");
    println!("{:<8} {:>12} {:>14} {:>8} {:>6}", "prompt", "after prompt", "teacher-forced", "mean", "> 1.0");
    for line in std::fs::read_to_string(&golden).with_context(|| golden.display().to_string())?.lines() {
        let r: Value = serde_json::from_str(line)?;
        let prompt = ids(&r["prompt_ids"])?;
        let mut forced = prompt.clone();
        forced.extend(ids(&r["gen_ids"])?);
        let logits = engine.score(&forced)?;
        let err = |step: usize, pair: &Value| -> Option<f32> {
            let (tok, want) = (pair[0].as_u64()? as usize, pair[1].as_f64()? as f32);
            Some((logits[(prompt.len() - 1 + step) * vocab + tok] - want).abs())
        };
        let after: Vec<f32> =
            r["top10_after_prompt"].as_array().context("top10")?.iter().filter_map(|p| err(0, p)).collect();
        let forced_errs: Vec<f32> = r["steps_top5"]
            .as_array()
            .context("steps_top5")?
            .iter()
            .enumerate()
            .flat_map(|(s, top5)| top5.as_array().into_iter().flatten().filter_map(move |p| err(s, p)))
            .collect();
        let max = |v: &[f32]| v.iter().copied().fold(0.0f32, f32::max);
        let mean = forced_errs.iter().sum::<f32>() / forced_errs.len().max(1) as f32;
        let over = forced_errs.iter().filter(|&&e| e > 1.0).count();
        println!(
            "{:<8} {:>12.4} {:>14.4} {:>8.4} {:>6}",
            r["id"].as_str().unwrap_or("?"),
            max(&after),
            max(&forced_errs),
            mean,
            over
        );
    }
    Ok(())
}
