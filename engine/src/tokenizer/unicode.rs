//! Code-point classes as llama.cpp's pre-tokenizers see them (`unicode_cpt_flags`): one general
//! category per code point plus the Unicode `White_Space` property.

use super::unicode_data::CATEGORY_RUNS;

/// A code point's general category, collapsed to its first letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Category {
    Letter = 1,
    Number = 2,
    Punctuation = 3,
    Mark = 4,
    Symbol = 5,
    Separator = 6,
    /// Control, format, surrogate, private use and unassigned code points.
    Other = 7,
}

/// Flags of one code point; `NONE` stands for "outside the fragment", which llama.cpp's
/// hand-written splitters test for with `as_uint() == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flags(u8);

impl Flags {
    pub const NONE: Flags = Flags(0);
    const WHITESPACE: u8 = 0x10;

    pub fn of(c: char) -> Flags {
        let ws = if is_whitespace(c) { Self::WHITESPACE } else { 0 };
        Flags(category(c) as u8 | ws)
    }

    pub fn is_defined(self) -> bool {
        self.0 != 0
    }
    pub fn is_letter(self) -> bool {
        self.0 & 0x0F == Category::Letter as u8
    }
    pub fn is_number(self) -> bool {
        self.0 & 0x0F == Category::Number as u8
    }
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
}

/// Unicode `White_Space`, the set llama.cpp generates from the `regex` module's `\s`.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    )
}

pub(crate) fn category(c: char) -> Category {
    let cp = c as u32;
    if cp < 0x80 {
        return ascii_category(cp as u8);
    }
    // Index of the last run starting at or before `cp`; run 0 starts at 0, so it exists.
    let i = CATEGORY_RUNS.partition_point(|&run| run >> 3 <= cp).saturating_sub(1);
    match CATEGORY_RUNS[i] & 7 {
        1 => Category::Letter,
        2 => Category::Number,
        3 => Category::Punctuation,
        4 => Category::Mark,
        5 => Category::Symbol,
        6 => Category::Separator,
        _ => Category::Other,
    }
}

fn ascii_category(b: u8) -> Category {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' => Category::Letter,
        b'0'..=b'9' => Category::Number,
        b' ' => Category::Separator,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => Category::Symbol,
        0x21..=0x7E => Category::Punctuation,
        _ => Category::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_sample_code_points() {
        assert_eq!(category('a'), Category::Letter);
        assert_eq!(category('!'), Category::Punctuation);
        assert_eq!(category('$'), Category::Symbol);
        assert_eq!(category('é'), Category::Letter);
        assert_eq!(category('日'), Category::Letter);
        assert_eq!(category('٣'), Category::Number);
        assert_eq!(category('\u{0301}'), Category::Mark);
        assert_eq!(category('—'), Category::Punctuation);
        assert_eq!(category('🙂'), Category::Symbol);
        assert_eq!(category('\u{00A0}'), Category::Separator);
        assert_eq!(category('\u{E000}'), Category::Other);
        assert_eq!(category('\u{10FFFF}'), Category::Other);
        assert!(Flags::of('\u{3000}').is_whitespace());
        assert!(!Flags::of('\u{1C}').is_whitespace());
    }

    #[test]
    fn ascii_table_agrees_with_generated_runs() {
        for b in 0u8..0x80 {
            let cp = u32::from(b);
            let i = CATEGORY_RUNS.partition_point(|&run| run >> 3 <= cp) - 1;
            assert_eq!(CATEGORY_RUNS[i] & 7, ascii_category(b) as u32, "byte {b:#x}");
        }
    }
}
