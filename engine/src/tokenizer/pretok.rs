//! BPE pre-tokenizers: the regex lists llama.cpp selects by `tokenizer.ggml.pre`
//! (`llm_tokenizer_bpe` in `src/llama-vocab.cpp`) and the way `unicode_regex_split`
//! (`src/unicode.cpp`) applies them.
//!
//! Each regex of a list splits every fragment left by the previous one; text between matches
//! stays a fragment of its own. Two regexes have hand-written matchers in llama.cpp whose
//! edge cases differ from a regex engine (the GPT-2 and Llama-3 ones), mirrored here. The others
//! run on a "collapsed" copy of the text in which every non-ASCII code point is replaced by one
//! stand-in character for its category, with `\p{..}` rewritten to match those stand-ins; that
//! is how llama.cpp runs them through `std::regex`, and it decides how non-ASCII text splits.

use fancy_regex::Regex;

use super::unicode::{Category, Flags, category};

/// The GPT-2 pattern; llama.cpp matches it with `unicode_regex_split_custom_gpt2`.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama-3 pattern (case-insensitive contractions spelled out); llama.cpp matches it with
/// `unicode_regex_split_custom_llama3`.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
// Code points that Unicode normalization would change are escaped, so the class stays
// byte-identical to llama.cpp's whatever an editor does to this file.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
const CJK_HANGUL: &str = "[一-龥ࠀ-一가-퟿]+";

/// What a `tokenizer.ggml.pre` value selects besides its regexes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreConfig {
    pub regexes: &'static [&'static str],
    /// A whole pre-token found in the vocabulary is emitted as is, without merges.
    pub ignore_merges: bool,
    /// The pre-tokenizer's default for `add_bos` before `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

const fn cfg(regexes: &'static [&'static str], ignore_merges: bool, add_bos: bool) -> PreConfig {
    PreConfig { regexes, ignore_merges, add_bos }
}

/// `(names, config)`: the `tokenizer.ggml.pre` values this crate understands.
const PRE_TABLE: &[(&[&str], PreConfig)] = &[
    (&["default"], cfg(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false, false)),
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        cfg(&[LLAMA3], true, true),
    ),
    (&["dbrx", "smaug-bpe"], cfg(&[LLAMA3], false, false)),
    (
        &["deepseek-llm"],
        cfg(
            &["[\r\n]", DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", CJK_HANGUL, r"\p{N}+"],
            false,
            false,
        ),
    ),
    (&["deepseek-coder"], cfg(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"], false, false)),
    (&["falcon"], cfg(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false, false)),
    (
        &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "exaone4",
            "trillion",
            "granite-docling",
        ],
        cfg(&[GPT2], false, false),
    ),
    (
        &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
        cfg(&[r"\p{N}", GPT2], false, false),
    ),
    (&["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo"], cfg(&[QWEN2], false, false)),
    (&["poro-chat", "bloom", "gpt3-finnish"], cfg(&[PORO], false, false)),
    (&["viking"], cfg(&[PORO, r"\p{N}"], false, false)),
    (&["tekken"], cfg(&[TEKKEN], true, true)),
    (&["gpt-4o", "llama4"], cfg(&[GPT4O], false, false)),
];

pub(crate) fn lookup(pre: &str) -> Option<PreConfig> {
    PRE_TABLE.iter().find(|(names, _)| names.contains(&pre)).map(|(_, c)| *c)
}

/// All accepted `tokenizer.ggml.pre` values, for error messages.
pub(crate) fn supported_names() -> String {
    PRE_TABLE.iter().flat_map(|(names, _)| names.iter().copied()).collect::<Vec<_>>().join(", ")
}

enum Pass {
    Gpt2,
    Llama3,
    /// A regex run on the collapsed text (`collapsed`) or on the text with non-ASCII white space
    /// replaced by U+000B (llama.cpp's `std::wregex` path, for patterns without `\p{..}`).
    Regex {
        re: Regex,
        collapsed: bool,
    },
}

/// A compiled list of pre-tokenizer passes.
pub(crate) struct PreTokenizer {
    passes: Vec<Pass>,
}

impl PreTokenizer {
    pub fn new(regexes: &[&str]) -> Result<Self, Box<fancy_regex::Error>> {
        let mut passes = Vec::with_capacity(regexes.len());
        for &expr in regexes {
            let pass = if expr == GPT2 {
                Pass::Gpt2
            } else if expr == LLAMA3 {
                Pass::Llama3
            } else if uses_categories(expr) {
                Pass::Regex { re: Regex::new(&collapse_regex(expr))?, collapsed: true }
            } else {
                Pass::Regex { re: Regex::new(expr)?, collapsed: false }
            };
            passes.push(pass);
        }
        Ok(Self { passes })
    }

    /// Splits `text` into pre-tokens (slices of `text`, in order, covering all of it).
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let cpts: Vec<char> = text.chars().collect();
        if cpts.is_empty() {
            return Vec::new();
        }
        let flags: Vec<Flags> = cpts.iter().map(|&c| Flags::of(c)).collect();
        // Fragment lengths in code points, as llama.cpp's `bpe_offsets`.
        let mut lens = vec![cpts.len()];
        for pass in &self.passes {
            let mut out = Vec::with_capacity(lens.len() * 2);
            let mut start = 0;
            for &len in &lens {
                let range = start..start + len;
                match pass {
                    Pass::Gpt2 => split_gpt2(&cpts[range.clone()], &flags[range], &mut out),
                    Pass::Llama3 => split_llama3(&cpts[range.clone()], &flags[range], &mut out),
                    Pass::Regex { re, collapsed } => {
                        split_regex(re, *collapsed, &cpts[range.clone()], &flags[range], &mut out)
                    }
                }
                start += len;
            }
            lens = out;
        }
        // Byte offset of every code point boundary.
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).collect();
        let mut pieces = Vec::with_capacity(lens.len());
        let mut start = 0;
        for len in lens {
            if len > 0 {
                pieces.push(&text[bounds[start]..bounds[start + len]]);
            }
            start += len;
        }
        pieces
    }
}

fn uses_categories(expr: &str) -> bool {
    ["\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}", "\\p{Lm}", "\\p{Lo}"]
        .iter()
        .any(|c| expr.contains(c))
}

/// Stand-in characters of the collapsed text (llama.cpp's `k_ucat_cpt`).
fn stand_in(cat: Category) -> char {
    match cat {
        Category::Number => '\u{D1}',
        Category::Letter => '\u{D2}',
        Category::Punctuation => '\u{D3}',
        Category::Mark => '\u{D4}',
        Category::Symbol => '\u{D5}',
        Category::Separator | Category::Other => '\u{D0}',
    }
}

fn collapse_char(c: char, f: Flags) -> char {
    if c.is_ascii() {
        c
    } else if f.is_whitespace() {
        '\u{0B}'
    } else {
        stand_in(category(c))
    }
}

/// Rewrites `\p{..}` into a class of its stand-in plus the ASCII members llama.cpp lists
/// (`k_ucat_map`); note that list leaves `~` out of `\p{S}`, and so does this.
fn collapse_regex(expr: &str) -> String {
    const CLASSES: &[(&str, &str)] = &[
        ("\\p{N}", "\\x{D1}0-9"),
        ("\\p{L}", "\\x{D2}A-Za-z"),
        ("\\p{P}", "\\x{D3}!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"),
        ("\\p{M}", "\\x{D4}"),
        ("\\p{S}", "\\x{D5}\\$\\+<->\\^`\\|"),
        ("\\p{Lu}", "\\x{D2}A-Za-z"),
        ("\\p{Ll}", "\\x{D2}A-Za-z"),
        ("\\p{Lt}", "\\x{D2}A-Za-z"),
        ("\\p{Lm}", "\\x{D2}A-Za-z"),
        ("\\p{Lo}", "\\x{D2}A-Za-z"),
    ];
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut prev = '\0';
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if c == '[' && prev != '\\' {
            inside = true;
        } else if inside && c == ']' && prev != '\\' {
            inside = false;
        } else if let Some((pat, class)) = CLASSES.iter().find(|(p, _)| rest.starts_with(p)) {
            if inside {
                out.push_str(class);
            } else {
                out.push('[');
                out.push_str(class);
                out.push(']');
            }
            rest = &rest[pat.len()..];
            prev = '}';
            continue;
        }
        out.push(c);
        prev = c;
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn split_regex(re: &Regex, collapsed: bool, cpts: &[char], flags: &[Flags], out: &mut Vec<usize>) {
    let text: String = cpts
        .iter()
        .zip(flags)
        .map(|(&c, &f)| {
            if collapsed {
                collapse_char(c, f)
            } else if !c.is_ascii() && f.is_whitespace() {
                '\u{0B}'
            } else {
                c
            }
        })
        .collect();
    let mut last_byte = 0;
    let mut last_cpt = 0;
    let chars_between = |from: usize, to: usize| text[from..to].chars().count();
    for m in re.find_iter(&text) {
        // A match error (backtracking limit) leaves the rest of the fragment whole.
        let Ok(m) = m else { break };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last_byte {
            let gap = chars_between(last_byte, m.start());
            out.push(gap);
            last_cpt += gap;
        }
        let len = chars_between(m.start(), m.end());
        out.push(len);
        last_cpt += len;
        last_byte = m.end();
    }
    if last_cpt < cpts.len() {
        out.push(cpts.len() - last_cpt);
    }
}

/// Walks one fragment the way llama.cpp's hand-written splitters do.
struct Cursor<'a> {
    cpts: &'a [char],
    flags: &'a [Flags],
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

const OUT_OF_RANGE: char = '\u{FFFF}';

impl Cursor<'_> {
    fn cpt(&self, pos: usize) -> char {
        self.cpts.get(pos).copied().unwrap_or(OUT_OF_RANGE)
    }
    fn in_range(&self, pos: usize) -> bool {
        pos < self.cpts.len()
    }
    fn flags(&self, pos: usize) -> Flags {
        self.flags.get(pos).copied().unwrap_or(Flags::NONE)
    }
    fn add(&mut self, end: usize) {
        if end > self.prev_end {
            self.out.push(end - self.prev_end);
        }
        self.prev_end = end;
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d`, optionally case-insensitive; returns the end of the match.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.cpt(pos) != '\'' || !self.in_range(pos + 1) {
            return None;
        }
        let low = |c: char| if fold { c.to_ascii_lowercase() } else { c };
        let next = low(self.cpt(pos + 1));
        if matches!(next, 's' | 't' | 'm' | 'd') {
            return Some(pos + 2);
        }
        if self.in_range(pos + 2) {
            let next2 = low(self.cpt(pos + 2));
            if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(pos + 3);
            }
        }
        None
    }

    /// Counts white space from `pos`; also returns the end of the last `\r`/`\n` in that run.
    fn whitespace_run(&self, pos: usize) -> (usize, usize) {
        let mut n = 0;
        let mut last_newline_end = 0;
        while self.flags(pos + n).is_whitespace() {
            if matches!(self.cpt(pos + n), '\r' | '\n') {
                last_newline_end = pos + n + 1;
            }
            n += 1;
        }
        (n, last_newline_end)
    }

    /// `\s+(?!\S)|\s+` as llama.cpp matches it (a run reaching the fragment's end is kept
    /// whole; otherwise its last character is left for the next token); `None` if no space.
    fn trailing_space(&self, pos: usize, n: usize) -> Option<usize> {
        if n > 1 && self.in_range(pos + n) {
            Some(pos + n - 1)
        } else if n > 0 {
            Some(pos + n)
        } else {
            None
        }
    }
}

fn is_other(f: Flags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_defined()
}

fn split_gpt2(cpts: &[char], flags: &[Flags], out: &mut Vec<usize>) {
    let mut c = Cursor { cpts, flags, prev_end: 0, out };
    let mut pos = 0;
    while pos < cpts.len() {
        let cpt = c.cpt(pos);
        if let Some(end) = c.contraction(pos, false) {
            pos = end;
            c.add(pos);
            continue;
        }
        let space = cpt == ' ';
        let f2 = if space { c.flags(pos + 1) } else { c.flags(pos) };
        let class: Option<fn(Flags) -> bool> = if f2.is_letter() {
            Some(Flags::is_letter)
        } else if f2.is_number() {
            Some(Flags::is_number)
        } else if is_other(f2) {
            Some(is_other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += usize::from(space);
            while class(c.flags(pos)) {
                pos += 1;
            }
            c.add(pos);
            continue;
        }
        let (n, _) = c.whitespace_run(pos);
        pos = c.trailing_space(pos, n).unwrap_or(pos + 1);
        c.add(pos);
    }
}

fn split_llama3(cpts: &[char], flags: &[Flags], out: &mut Vec<usize>) {
    let mut c = Cursor { cpts, flags, prev_end: 0, out };
    let mut pos = 0;
    while pos < cpts.len() {
        let cpt = c.cpt(pos);
        let f = c.flags(pos);
        if let Some(end) = c.contraction(pos, true) {
            pos = end;
            c.add(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(cpt == '\r' || cpt == '\n' || f.is_number()) && (f.is_letter() || c.flags(pos + 1).is_letter()) {
            pos += 1;
            while c.flags(pos).is_letter() {
                pos += 1;
            }
            c.add(pos);
            continue;
        }
        // \p{N}{1,3}
        if f.is_number() {
            let mut ini = pos;
            while c.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= 3 {
                    c.add(pos);
                    ini = pos;
                }
            }
            c.add(pos);
            continue;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*  (llama.cpp tests the first character's flags for "defined")
        let space = cpt == ' ';
        let mut f2 = if space { c.flags(pos + 1) } else { f };
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f.is_defined() {
            pos += usize::from(space);
            while is_other(f2) {
                pos += 1;
                f2 = c.flags(pos);
            }
            while matches!(c.cpt(pos), '\r' | '\n') {
                pos += 1;
            }
            c.add(pos);
            continue;
        }
        let (n, last_newline_end) = c.whitespace_run(pos);
        pos = if last_newline_end > 0 { last_newline_end } else { c.trailing_space(pos, n).unwrap_or(pos + 1) };
        c.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let cfg = lookup(pre).expect("known pre");
        let p = PreTokenizer::new(cfg.regexes).expect("regexes compile");
        p.split(text).into_iter().map(String::from).collect()
    }

    #[test]
    fn every_listed_pre_tokenizer_compiles_and_covers_the_text() {
        let text = "Hello, world! It's 2024-06-01 — 日本語 über 12345  \n\t x🙂y\r\n";
        for (names, cfg) in PRE_TABLE {
            let p = PreTokenizer::new(cfg.regexes).unwrap_or_else(|e| panic!("{names:?}: {e}"));
            assert_eq!(p.split(text).concat(), text, "{names:?}");
        }
    }

    #[test]
    fn smollm_splits_digits_and_words() {
        assert_eq!(split("smollm", "Hello world"), ["Hello", " world"]);
        assert_eq!(split("smollm", "12345 678"), ["1", "2", "3", "4", "5", " ", "6", "7", "8"]);
        assert_eq!(split("smollm", "I'm can't"), ["I", "'m", " can", "'t"]);
        assert_eq!(split("smollm", "a   b"), ["a", "  ", " b"]);
        assert_eq!(split("smollm", "trailing "), ["trailing", " "]);
        assert_eq!(split("smollm", "\n\n\n"), ["\n\n\n"]);
        assert_eq!(split("smollm", "x!?... (y)"), ["x", "!?...", " (", "y", ")"]);
    }

    #[test]
    fn gpt2_keeps_digit_runs() {
        assert_eq!(split("gpt-2", "abc 12345"), ["abc", " 12345"]);
        assert_eq!(split("gpt-2", "don't"), ["don", "'t"]);
        assert_eq!(split("gpt-2", "DON'T"), ["DON", "'", "T"]);
    }

    #[test]
    fn llama3_groups_three_digits_and_folds_contractions() {
        assert_eq!(split("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(split("llama-bpe", "DON'T stop"), ["DON", "'T", " stop"]);
        assert_eq!(split("llama-bpe", "a,\n\nb"), ["a", ",\n\n", "b"]);
        assert_eq!(split("llama-bpe", "x  \n y"), ["x", "  \n", " y"]);
        assert_eq!(split("llama-bpe", "(hi)"), ["(hi", ")"]);
    }

    #[test]
    fn qwen2_splits_single_digits() {
        assert_eq!(split("qwen2", "12345 ab"), ["1", "2", "3", "4", "5", " ab"]);
        assert_eq!(split("qwen2", "日本語 ok"), ["日本語", " ok"]);
        assert_eq!(split("qwen2", "It'S"), ["It", "'S"]);
    }

    #[test]
    fn default_splits_punctuation_first() {
        // The last pass cuts three digits out of the run and leaves the rest.
        assert_eq!(split("default", "a+b=1234"), ["a", "+", "b", "=", "123", "4"]);
        assert_eq!(split("default", "hi, there"), ["hi", ",", " there"]);
    }

    #[test]
    fn deepseek_coder_splits_lines_and_cjk() {
        assert_eq!(split("deepseek-coder", "ab\ncd"), ["ab", "\n", "cd"]);
        assert_eq!(split("deepseek-coder", "x 12"), ["x", " ", "1", "2"]);
    }

    #[test]
    fn other_pre_tokenizers() {
        assert_eq!(split("deepseek-llm", "Hello 123\nworld"), ["Hello", " ", "123", "\n", "world"]);
        assert_eq!(split("falcon", "x=12345"), ["x", "=", "123", "45"]);
        assert_eq!(split("poro-chat", "Hello, world."), ["Hello", ",", " world", "."]);
        assert_eq!(split("tekken", "HelloWorld fooBar 12"), ["Hello", "World", " foo", "Bar", " ", "1", "2"]);
        assert_eq!(split("gpt-4o", "I'm fine"), ["I'm", " fine"]);
    }

    #[test]
    fn collapsed_regex_rewrites_categories() {
        assert_eq!(collapse_regex(r"\p{N}+"), r"[\x{D1}0-9]+");
        assert_eq!(collapse_regex(r"[^\s\p{L}]"), r"[^\s\x{D2}A-Za-z]");
    }
}
