//! Special tokens: which ids end generation, which get the CONTROL attribute by their text, and
//! how raw text is cut at special-token texts before the vocabulary's model sees it
//! (llama.cpp's `llama_vocab::impl::load` and `tokenizer_st_partition`).

use super::attr;

/// Texts llama.cpp takes for an end-of-turn token when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts that end generation whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Ids given by metadata; the rest are found by text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Given {
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

pub(crate) struct Detected {
    pub eot: Option<u32>,
    /// Sorted, unique.
    pub eog: Vec<u32>,
}

/// Finds the end-of-generation set and marks control-looking tokens CONTROL, as llama.cpp does
/// (it warns that such a token "was not control-type"; the mark decides whether parsing
/// special tokens matches it).
pub(crate) fn detect(tokens: &[String], attrs: &mut [u8], given: Given) -> Detected {
    let mut find = |given: Option<u32>, texts: &[&str]| -> Option<u32> {
        if given.is_some() {
            return given;
        }
        let id = tokens.iter().position(|t| texts.contains(&t.as_str()))?;
        attrs[id] |= attr::CONTROL;
        u32::try_from(id).ok()
    };
    let eot = find(given.eot, EOT_TEXTS);
    let eom = find(given.eom, EOM_TEXTS);
    find(None, FIM_PRE_TEXTS);
    find(None, FIM_SUF_TEXTS);
    find(None, FIM_MID_TEXTS);
    let fim_pad = find(given.fim_pad, FIM_PAD_TEXTS);
    let fim_rep = find(given.fim_rep, FIM_REP_TEXTS);
    let fim_sep = find(given.fim_sep, FIM_SEP_TEXTS);

    let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep, given.eos, eot, eom].into_iter().flatten().collect();
    for (id, text) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&text.as_str()) {
            attrs[id] |= attr::CONTROL;
            eog.extend(u32::try_from(id).ok());
        }
    }
    eog.sort_unstable();
    eog.dedup();
    Detected { eot, eog }
}

/// Ids that `encode` matches as whole tokens: CONTROL, USER_DEFINED and UNKNOWN tokens, longest
/// text first (ties by id, where llama.cpp's unstable sort leaves the order open).
pub(crate) fn partition_order(tokens: &[String], attrs: &[u8]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..tokens.len())
        .filter(|&i| attrs[i] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    ids.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));
    ids
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Cuts `text` at every occurrence of each special token's text, one token after another in
/// `order`. User-defined tokens are always cut out; CONTROL and UNKNOWN ones only when
/// `parse_special` (llama.cpp follows Hugging Face `tokenizers` here).
pub(crate) fn partition<'t>(
    text: &'t str,
    order: &[u32],
    tokens: &[String],
    attrs: &[u8],
    parse_special: bool,
) -> Vec<Fragment<'t>> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(text));
    for &id in order {
        let i = id as usize;
        if !parse_special && attrs[i] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = tokens[i].as_str();
        if needle.is_empty() || !text.contains(needle) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for frag in frags {
            let Fragment::Text(mut rest) = frag else {
                next.push(frag);
                continue;
            };
            while let Some(at) = rest.find(needle) {
                if at > 0 {
                    next.push(Fragment::Text(&rest[..at]));
                }
                next.push(Fragment::Token(id));
                rest = &rest[at + needle.len()..];
            }
            if !rest.is_empty() {
                next.push(Fragment::Text(rest));
            }
        }
        frags = next;
    }
    frags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_special_wins_and_text_between_is_kept() {
        let tokens: Vec<String> = ["a", "<s>", "<s><s>", "<u>"].iter().map(|s| s.to_string()).collect();
        let attrs = [attr::NORMAL, attr::CONTROL, attr::CONTROL, attr::USER_DEFINED];
        let order = partition_order(&tokens, &attrs);
        assert_eq!(order, [2, 1, 3]);
        let f = partition("x<s><s><s>y<u>", &order, &tokens, &attrs, true);
        use Fragment::*;
        assert_eq!(f, [Text("x"), Token(2), Token(1), Text("y"), Token(3)]);
        let f = partition("x<s>y<u>", &order, &tokens, &attrs, false);
        assert_eq!(f, [Text("x<s>y"), Token(3)]);
    }

    #[test]
    fn end_of_generation_set_includes_texts_and_metadata() {
        let tokens: Vec<String> =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<reponame>", "hi"].iter().map(|s| s.to_string()).collect();
        let mut attrs = vec![attr::NORMAL; tokens.len()];
        let d = detect(&tokens, &mut attrs, Given { eos: Some(4), ..Given::default() });
        assert_eq!(d.eog, [0, 2, 3, 4]);
        assert_eq!(d.eot, Some(0));
        assert_eq!(attrs[2] & attr::CONTROL, attr::CONTROL);
        assert_eq!(attrs[1] & attr::CONTROL, 0);
    }
}
