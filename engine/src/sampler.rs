//! Token sampling: logit bias, repetition/presence/frequency penalties, then greedy or
//! top-k → top-p → min-p → temperature → a draw from a seeded RNG (llama.cpp's default order).

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
pub use realm_kernels::argmax;

/// Sampling settings for one sequence. A temperature of 0 (or below) is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; llama.cpp's `repeat_penalty`.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// How many of the last tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Added to a token's logit before anything else; `f32::NEG_INFINITY` bans it.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed, same tokens. `None` draws a seed from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Whether the token is the logits' argmax and nothing else: greedy, with no bias or
    /// penalty changing the logits first. Such a sequence can take its argmax from the device.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.logit_bias.is_empty() && !self.penalizes()
    }

    /// Whether a penalty changes any logit: one is set and it looks at some tokens.
    fn penalizes(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0)
    }

    /// [`SamplingParams::validate`], and that every biased token is in a vocabulary of `vocab`.
    pub fn validate_for(&self, vocab: usize) -> Result<(), SamplerError> {
        self.validate()?;
        if let Some(&(id, _)) = self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            return Err(SamplerError::BiasToken { id, vocab });
        }
        Ok(())
    }

    /// Checks ranges; the error names the parameter and its value.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |name: &'static str, value: f32, range: &'static str| {
            Err(SamplerError::OutOfRange { name, value: value.to_string(), range })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", self.temperature, ">= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "(0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "[0, 1]");
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty", self.repetition_penalty, "> 0");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "finite");
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty, "finite");
        }
        if let Some(&(_, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan()) {
            return bad("logit_bias", b, "a number");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("{name} = {value} is out of range (must be {range})")]
    OutOfRange { name: &'static str, value: String, range: &'static str },
    #[error("logit_bias names token {id}, outside the vocabulary of {vocab}")]
    BiasToken { id: u32, vocab: usize },
    #[error("every token was banned or had a non-finite logit")]
    NothingToSample,
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Self, SamplerError> {
        params.validate_for(vocab)?;
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Ok(Self { params, rng: ChaCha8Rng::seed_from_u64(seed), candidates: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place by bias and penalties), given the
    /// tokens generated or prompted so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplerError> {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        apply_penalties(logits, history, p);
        if p.temperature <= 0.0 {
            return argmax(logits).ok_or(SamplerError::NothingToSample);
        }

        let cand = &mut self.candidates;
        cand.clear();
        cand.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)));
        if cand.is_empty() {
            return Err(SamplerError::NothingToSample);
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        // top-p and min-p work on the untempered distribution, as llama.cpp's do. Both keep a
        // prefix of the candidates sorted by logit, so only top-p needs the sort (a whole
        // vocabulary's sort costs more than the rest of sampling together).
        let mut probs = softmax(cand.iter().map(|c| c.1), 1.0);
        if p.top_p < 1.0 {
            cand.sort_unstable_by(by_logit_desc);
            probs = softmax(cand.iter().map(|c| c.1), 1.0);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs.iter().take(cand.len()).fold(0.0f32, |m, &pr| m.max(pr)) * p.min_p;
            let mut kept = probs.iter();
            cand.retain(|_| kept.next().is_some_and(|&pr| pr >= floor));
        }

        let probs = softmax(cand.iter().map(|c| c.1), p.temperature);
        let r = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut cum = 0.0f64;
        for (c, &pr) in cand.iter().zip(&probs) {
            cum += f64::from(pr);
            if r < cum {
                return Ok(c.0);
            }
        }
        Ok(cand[cand.len() - 1].0)
    }
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// llama.cpp's penalties over the last `penalty_last_n` tokens: repetition divides positive
/// logits and multiplies negative ones; frequency subtracts per occurrence; presence once.
fn apply_penalties(logits: &mut [f32], history: &[u32], p: &SamplingParams) {
    if !p.penalizes() {
        return;
    }
    let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &id in recent {
        *counts.entry(id).or_default() += 1;
    }
    for (&id, &count) in &counts {
        let Some(l) = logits.get_mut(id as usize) else { continue };
        if *l > 0.0 {
            *l /= p.repetition_penalty;
        } else {
            *l *= p.repetition_penalty;
        }
        *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p, 8).expect("valid params")
    }

    #[test]
    fn plain_greedy_is_greedy_with_nothing_changing_the_logits() {
        assert!(SamplingParams::greedy().is_plain_greedy());
        assert!(!SamplingParams::default().is_plain_greedy());
        let changed = [
            SamplingParams { logit_bias: vec![(1, 2.0)], ..SamplingParams::greedy() },
            SamplingParams { repetition_penalty: 1.1, ..SamplingParams::greedy() },
            SamplingParams { presence_penalty: 0.5, ..SamplingParams::greedy() },
            SamplingParams { frequency_penalty: 0.5, ..SamplingParams::greedy() },
        ];
        for p in changed {
            assert!(!p.is_plain_greedy(), "{p:?}");
        }
        // Penalties over no tokens change nothing.
        let p = SamplingParams { repetition_penalty: 1.1, penalty_last_n: 0, ..SamplingParams::greedy() };
        assert!(p.is_plain_greedy());
    }

    #[test]
    fn greedy_picks_the_highest_and_lowest_id_on_ties() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.0, 3.0, 1.0, 3.0], &[]), Ok(1));
    }

    #[test]
    fn argmax_skips_nan_and_minus_infinity_and_takes_the_first_of_equals() {
        // Long enough for the lanes and a remainder; the maximum sits in both.
        let mut logits: Vec<f32> = (0..37).map(|i| (i % 7) as f32).collect();
        logits[3] = f32::NAN;
        logits[20] = 9.0;
        logits[35] = 9.0;
        assert_eq!(argmax(&logits), Some(20));
        logits[36] = 9.5;
        assert_eq!(argmax(&logits), Some(36));
        logits[0] = f32::INFINITY;
        assert_eq!(argmax(&logits), Some(0));
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN; 16].iter().copied().chain([-3.0]).collect::<Vec<_>>()), Some(16));
    }

    proptest! {
        #[test]
        fn argmax_is_the_first_greatest(logits in proptest::collection::vec(-1e3f32..1e3, 1..200)) {
            let want = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
            prop_assert_eq!(argmax(&logits), Some(want as u32));
        }
    }

    #[test]
    fn logit_bias_can_ban_and_promote() {
        let p = SamplingParams { logit_bias: vec![(1, f32::NEG_INFINITY), (2, 10.0)], ..SamplingParams::greedy() };
        let mut s = sampler(p);
        assert_eq!(s.sample(&mut [0.0, 5.0, 1.0, 3.0], &[]), Ok(2));
    }

    #[test]
    fn bias_outside_vocab_is_an_error() {
        let p = SamplingParams { logit_bias: vec![(8, 1.0)], ..SamplingParams::greedy() };
        assert_eq!(Sampler::new(p, 8).err(), Some(SamplerError::BiasToken { id: 8, vocab: 8 }));
    }

    #[test]
    fn penalties_follow_llama_cpp() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut logits = [4.0, -4.0, 1.0];
        apply_penalties(&mut logits, &[0, 0, 1], &p);
        assert_eq!(logits, [4.0 / 2.0 - 1.0 - 0.25, -8.0 - 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let p = SamplingParams { temperature: 5.0, top_k: 1, seed: Some(3), ..SamplingParams::default() };
        let mut s = sampler(p);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 2.5, 2.4], &[]), Ok(2));
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: Some(9),
            ..SamplingParams::default()
        };
        let mut s = sampler(p);
        for _ in 0..200 {
            let id = s.sample(&mut [10.0, 9.9, 0.0, -3.0], &[]).expect("sample");
            assert!(id < 2, "min_p kept token {id}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ≈ 0.665, 0.245, 0.090: top_p 0.8 keeps the first two.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            seed: Some(1),
            ..SamplingParams::default()
        };
        let mut s = sampler(p);
        let mut seen = [0; 3];
        for _ in 0..400 {
            seen[s.sample(&mut [2.0, 1.0, 0.0], &[]).expect("sample") as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 0 && seen[1] > 0);
    }

    #[test]
    fn everything_banned_is_an_error() {
        let mut s = sampler(SamplingParams::default());
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4], &[]), Err(SamplerError::NothingToSample));
    }

    #[test]
    fn bad_params_name_the_field() {
        let err = SamplingParams { top_p: 0.0, ..SamplingParams::default() }.validate().expect_err("top_p 0");
        assert!(err.to_string().contains("top_p"), "{err}");
        let err = SamplingParams { temperature: f32::NAN, ..SamplingParams::default() }.validate().expect_err("nan");
        assert!(err.to_string().contains("temperature"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn same_seed_same_tokens(seed in any::<u64>(), logits in proptest::collection::vec(-20.0f32..20.0, 2..64), temp in 0.1f32..3.0) {
            let p = SamplingParams { temperature: temp, seed: Some(seed), top_k: 0, ..SamplingParams::default() };
            let mut a = Sampler::new(p.clone(), logits.len()).expect("params");
            let mut b = Sampler::new(p, logits.len()).expect("params");
            for _ in 0..8 {
                let x = a.sample(&mut logits.clone(), &[]).expect("sample");
                let y = b.sample(&mut logits.clone(), &[]).expect("sample");
                prop_assert_eq!(x, y);
                prop_assert!((x as usize) < logits.len());
            }
        }
    }
}
