//! One forward step over many sequences gives each the logits it would get alone: the
//! property continuous batching relies on.

mod common;

use realm_engine::gguf::GgufFile;
use realm_engine::model::{Llama, Logits, ModelError, SeqStep};
use realm_kernels::cpu::{Activations, Cpu};

fn model() -> Llama<Cpu> {
    let file = GgufFile::open(&common::default_model_path()).expect("open model");
    Llama::load(&file, Cpu::new(2, Activations::F32).expect("cpu")).expect("load")
}

#[test]
fn a_batched_step_equals_separate_steps() {
    let m = model();
    let (a, b) = ([504u32, 3575, 282, 4649, 314], [19556u32, 28, 905]);

    // Alone: prefill, then one decode token each.
    let mut alone = Vec::new();
    for (prompt, next) in [(&a[..], 30u32), (&b[..], 17u32)] {
        let mut cache = m.new_cache().expect("cache");
        let prefill =
            m.forward(&mut [SeqStep { cache: &mut cache, tokens: prompt, logits: Logits::Last }]).expect("prefill");
        let decode =
            m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[next], logits: Logits::Last }]).expect("decode");
        alone.push((prefill.concat(), decode.concat()));
    }

    // Together: both prefills in one step, then both decodes in one step.
    let (mut ca, mut cb) = (m.new_cache().expect("cache"), m.new_cache().expect("cache"));
    let prefill = m
        .forward(&mut [
            SeqStep { cache: &mut ca, tokens: &a, logits: Logits::Last },
            SeqStep { cache: &mut cb, tokens: &b, logits: Logits::Last },
        ])
        .expect("batched prefill");
    let decode = m
        .forward(&mut [
            SeqStep { cache: &mut ca, tokens: &[30], logits: Logits::Last },
            SeqStep { cache: &mut cb, tokens: &[17], logits: Logits::Last },
        ])
        .expect("batched decode");
    assert_eq!(ca.len(), a.len() + 1);
    assert_eq!(cb.len(), b.len() + 1);
    for (i, (p, d)) in alone.iter().enumerate() {
        // The exact path computes every row the same way whatever else is in the batch.
        assert_eq!(&prefill[i], p, "prefill logits of sequence {i}");
        assert_eq!(&decode[i], d, "decode logits of sequence {i}");
    }
}

#[test]
fn all_logits_rows_match_last_row_steps() {
    let m = model();
    let tokens = [504u32, 3575, 282];
    let vocab = m.config.vocab_size;
    let mut cache = m.new_cache().expect("cache");
    let all =
        m.forward(&mut [SeqStep { cache: &mut cache, tokens: &tokens, logits: Logits::All }]).expect("all").concat();
    assert_eq!(all.len(), tokens.len() * vocab);
    let mut cache = m.new_cache().expect("cache");
    for (i, t) in tokens.iter().enumerate() {
        let row = m
            .forward(&mut [SeqStep { cache: &mut cache, tokens: &[*t], logits: Logits::Last }])
            .expect("step")
            .concat();
        assert_eq!(row, all[i * vocab..(i + 1) * vocab], "row {i}");
    }
}

#[test]
fn bad_steps_are_errors_not_panics() {
    let m = model();
    let mut cache = m.new_cache().expect("cache");
    let err = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[], logits: Logits::Last }]);
    assert!(matches!(err, Err(ModelError::EmptyStep)));
    let err = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &[u32::MAX], logits: Logits::Last }]);
    assert!(matches!(err, Err(ModelError::BadToken { id: u32::MAX, .. })));
    let too_long = vec![1u32; m.config.context_length + 1];
    let err = m.forward(&mut [SeqStep { cache: &mut cache, tokens: &too_long, logits: Logits::Last }]);
    assert!(matches!(err, Err(ModelError::ContextFull { .. })), "{err:?}");
    assert!(cache.is_empty(), "a refused step leaves the cache untouched");
}
