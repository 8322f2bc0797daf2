//! Characters that must not pass as they are into a signed artifact (a user
//! ID the org key certifies, a certificate's common name), a terminal or a
//! log line: controls, and the invisible format characters that reorder or
//! hide what a reader sees. One list for every module, so the appliance
//! never refuses a character in one place and lets it through in another.
//! Also how an error and its causes read as one line.

/// Invisible format characters that are not controls: Arabic letter mark,
/// Mongolian vowel separator, zero-width space, left-to-right and
/// right-to-left marks, line and paragraph separators, bidi embeddings,
/// overrides and isolates, word joiner and invisible operators, byte order
/// mark, interlinear annotation marks. The zero-width joiner and non-joiner
/// are not among them: scripts and emoji need them in names.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// A control character or an invisible format character.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || is_invisible_format(c)
}

/// An error followed by each of its causes, `: `-separated. orgkey's errors
/// (like sqlx's and cryptoki's) show their cause in their own message and
/// also keep it as their source: a cause the text so far already ends with
/// is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the store: {0}")]
        Shown(#[source] std::io::Error),
        #[error("reading the store")]
        Kept(#[source] std::io::Error),
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            error_chain(&Outer::Shown(io())),
            "reading the store: disk on fire"
        );
        assert_eq!(
            error_chain(&Outer::Kept(io())),
            "reading the store: disk on fire"
        );
    }

    #[test]
    fn hidden_characters_are_the_controls_and_the_invisible_formats() {
        for c in [
            '\0', '\n', '\t', '\u{7f}', '\u{85}', '\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}',
        ] {
            assert!(is_hidden(c), "{:?}", c);
        }
        for c in ['a', ' ', '@', '<', 'é', 'ß', '中', '\u{00a0}', '\u{200d}'] {
            assert!(!is_hidden(c), "{:?}", c);
        }
    }
}
