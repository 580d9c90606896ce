//! What free text a person types (names, descriptions) may hold.

/// Characters that change how the text around them is shown without being visible: the
/// bidirectional overrides, embeddings and isolates (which can make "Anvil" display as
/// something else, or reverse a neighbouring price), and the zero-width characters (which
/// make two names that look the same differ). Refused in names at the edge.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'                  // Arabic letter mark
            | '\u{200B}'..='\u{200F}' // zero-width space/non-joiner/joiner, LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{FEFF}' // zero-width no-break space
    )
}

/// Whether `s` holds any [`is_invisible_format`] character.
pub fn has_invisible_format(s: &str) -> bool {
    s.chars().any(is_invisible_format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_zero_width_characters_are_caught_and_ordinary_text_is_not() {
        for bad in [
            "Ad\u{202E}a",
            "A\u{200B}da",
            "\u{2066}x\u{2069}",
            "\u{FEFF}Ada",
        ] {
            assert!(has_invisible_format(bad), "{bad:?}");
        }
        for good in ["Ada Lovelace", "Zoë", "محمد", "山田 太郎", "O'Brien-Smith"] {
            assert!(!has_invisible_format(good), "{good:?}");
        }
    }
}
