//! Tokenizers built from tiny hand-made vocabularies.

use super::*;

/// `<unk> <s> </s>`, the 256 byte tokens, then `normal` with their scores.
fn spm(normal: &[(&str, f32)], add_space_prefix: Option<bool>) -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    let mut scores = vec![0.0; tokens.len()];
    for &(t, s) in normal {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(s);
    }
    Tokenizer::from_parts(TokenizerSpec {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        add_space_prefix,
        ..TokenizerSpec::default()
    })
    .expect("valid SentencePiece vocabulary")
}

fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&id| tok.token_text(id).unwrap_or("?").to_string()).collect()
}

#[test]
fn spm_merges_highest_score_first() {
    let tok = spm(&[("a", -5.0), ("b", -5.0), ("c", -5.0), ("ab", -1.0), ("bc", -0.5)], Some(false));
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["a", "bc"]);
    let tok = spm(&[("a", -5.0), ("b", -5.0), ("c", -5.0), ("ab", -0.5), ("bc", -1.0)], Some(false));
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["ab", "c"]);
}

#[test]
fn spm_equal_scores_merge_leftmost_first() {
    let tok = spm(&[("a", -5.0), ("aa", -1.0)], Some(false));
    assert_eq!(texts(&tok, &tok.encode("aaa", false)), ["aa", "a"]);
}

#[test]
fn spm_merges_through_pieces_that_are_tokens() {
    let tok = spm(&[("a", -5.0), ("b", -5.0), ("c", -5.0), ("ab", -2.0), ("abc", -1.0)], Some(false));
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["abc"]);
}

#[test]
fn spm_falls_back_to_byte_tokens() {
    let tok = spm(&[("a", -1.0)], Some(false));
    let ids = tok.encode("aé", false);
    assert_eq!(texts(&tok, &ids), ["a", "<0xC3>", "<0xA9>"]);
    assert_eq!(tok.decode(&ids), "aé");
    let mut stream = tok.stream_decoder();
    let pushed: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(pushed, ["a", "", "é"]);
}

#[test]
fn spm_space_prefix_and_its_removal_on_decode() {
    let tok = spm(&[("\u{2581}", -3.0), ("a", -3.0), ("b", -3.0), ("\u{2581}a", -1.0), ("\u{2581}b", -1.0)], None);
    assert!(tok.add_bos(), "SentencePiece adds BOS by default");
    let ids = tok.encode("a b", false);
    assert_eq!(texts(&tok, &ids), ["\u{2581}a", "\u{2581}b"]);
    assert_eq!(tok.decode(&ids), "a b");

    let no_prefix = spm(&[("\u{2581}", -3.0), ("a", -3.0), ("\u{2581}a", -1.0)], Some(false));
    assert_eq!(texts(&no_prefix, &no_prefix.encode("a a", false)), ["a", "\u{2581}a"]);
}

#[test]
fn spm_special_tokens_and_space_after_them() {
    let tok = spm(&[("\u{2581}", -3.0), ("a", -3.0), ("\u{2581}a", -1.0)], None);
    let ids = tok.encode("<s>a</s>", true);
    assert_eq!(texts(&tok, &ids), ["<s>", "\u{2581}a", "</s>"]);
    // Unparsed, `<s>` is plain text, spelled with byte tokens where needed.
    assert!(tok.encode("<s>", false).iter().all(|&id| id != 1));
    assert_eq!(tok.decode(&ids), "<s> a</s>");
    assert_eq!(tok.decode_with(&ids, Special::Skip), " a");
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.is_eog(2) && !tok.is_eog(1));
}

fn bpe(pre: &str, tokens: &[&str], merges: &[&str]) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_parts(TokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        eos: Some(0),
        bos: Some(0),
        ..TokenizerSpec::default()
    })
}

#[test]
fn bpe_merges_by_rank_within_pre_tokens() {
    let tok = bpe("gpt-2", &["<|endoftext|>", "a", "b", "Ġ", "ab", "Ġa", "Ġab", "!"], &["Ġ a", "a b", "Ġa b"])
        .expect("valid BPE vocabulary");
    let ids = tok.encode("ab ab!", false);
    assert_eq!(texts(&tok, &ids), ["ab", "Ġab", "!"]);
    assert_eq!(tok.decode(&ids), "ab ab!");
    assert!(!tok.add_bos(), "gpt2 BPE does not add BOS by default");
    assert_eq!(tok.encode("<|endoftext|>a", true), [0, 1]);
    assert!(tok.is_eog(0));
}

#[test]
fn bpe_prefers_lower_rank_over_position() {
    let tok = bpe("gpt-2", &["a", "b", "c", "ab", "bc"], &["b c", "a b"]).expect("valid");
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["a", "bc"]);
}

#[test]
fn construction_errors_name_the_key_and_value() {
    let err = bpe("gpt-2", &["a", "b"], &["ab"]).expect_err("malformed merge");
    assert!(err.to_string().contains("tokenizer.ggml.merges[0] = \"ab\""), "{err}");
    let err = bpe("nonesuch", &["a"], &[]).expect_err("unknown pre");
    assert!(err.to_string().contains("\"nonesuch\"") && err.to_string().contains("smollm"), "{err}");
    let err = bpe("gpt-2", &["a", "a"], &[]).expect_err("duplicate");
    assert!(matches!(err, TokenizerError::DuplicateToken { first: 0, second: 1, .. }), "{err}");
    let err = Tokenizer::from_parts(TokenizerSpec {
        model: "bert".into(),
        tokens: vec!["a".into()],
        ..TokenizerSpec::default()
    })
    .expect_err("unsupported model");
    assert!(err.to_string().contains("\"bert\""), "{err}");
    let err = Tokenizer::from_parts(TokenizerSpec {
        model: "llama".into(),
        tokens: vec!["a".into()],
        bos: Some(7),
        ..TokenizerSpec::default()
    })
    .expect_err("bos out of range");
    assert!(err.to_string().contains("tokenizer.ggml.bos_token_id = 7"), "{err}");
    let err = Tokenizer::from_parts(TokenizerSpec {
        model: "llama".into(),
        tokens: vec!["a".into(), "b".into()],
        scores: Some(vec![0.0]),
        ..TokenizerSpec::default()
    })
    .expect_err("short scores");
    assert!(err.to_string().contains("tokenizer.ggml.scores has 1 entries"), "{err}");
}
