//! Showing text that came from outside (request fields, certificate and key
//! contents, audit details) on a terminal or in a log line. Control
//! characters, Unicode bidi controls, line and paragraph separators and
//! invisible format characters are rendered as escapes (`\n`, `\t`,
//! `\u{202e}`), so no field can start a forged line or column, move the
//! cursor, or reorder what the reader sees.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

fn escape(s: &str, backslash: bool) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| crate::text::is_hidden(c) || (backslash && c == '\\'))
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' if backslash => out.push_str("\\\\"),
            c if crate::text::is_hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One field of a tab-separated listing (`orgkey audit list`): hidden
/// characters escaped, and backslashes doubled so that an escape in the
/// output always stands for a hidden character, never for literal text.
pub(crate) fn field(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// A log line's text: hidden characters escaped. Backslashes stay as they
/// are (values logged with `?` are already Rust-escaped).
pub(crate) fn log_text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// The fmt layer's field formatter, escaping every field value and the
/// message. tracing-subscriber's default formatter only neutralizes ANSI
/// escape sequences: a `%` field or a message holding a newline would
/// otherwise write a second, forged log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, name: &str, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let text = if name == "message" {
            value.to_string()
        } else {
            format!("{name}={value}")
        };
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = write!(self.writer, "{sep}{}", log_text(&text));
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), format_args!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = crate::text::error_chain(value);
        self.write(field.name(), format_args!("{text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn hidden_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(field("plain text, ümlaut ✓"), Cow::Borrowed(_)));
        assert_eq!(
            field("a\nb\tc\rd\0e\u{1b}[2Jf\u{7f}\u{85}"),
            "a\\nb\\tc\\rd\\u{0}e\\u{1b}[2Jf\\u{7f}\\u{85}"
        );
        assert_eq!(
            field("pay \u{202e}gnp.exe\u{202c} \u{2066}x\u{2069}\u{200f}\u{61c}"),
            "pay \\u{202e}gnp.exe\\u{202c} \\u{2066}x\\u{2069}\\u{200f}\\u{61c}"
        );
        assert_eq!(
            field("l1\u{2028}l2\u{2029}\u{200b}\u{feff}"),
            "l1\\u{2028}l2\\u{2029}\\u{200b}\\u{feff}"
        );
        // A literal "\n" in the text cannot pass for an escaped newline.
        assert_eq!(field("a\\nb"), "a\\\\nb");
        assert_eq!(log_text("a\\nb\n"), "a\\nb\\n");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_line_holds_one_line_whatever_its_fields_hold() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer\nERROR forged")]
        struct Outer(#[source] std::io::Error);

        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = super::super::log_subscriber("info", move || buf.clone(), Some(false));
        tracing::subscriber::with_default(subscriber, || {
            let evil = "alice\n2026-01-01T00:00:00Z  INFO orgkey: forged \u{202e}line";
            let err = Outer(std::io::Error::other("inner\r\nsource"));
            tracing::warn!(
                client = %evil,
                email = ?evil,
                error = &err as &dyn std::error::Error,
                "refused {evil}"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        assert!(text.ends_with('\n'));
        assert!(
            !text.contains('\r') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        for want in [
            "refused alice\\n2026-01-01T00:00:00Z  INFO orgkey: forged \\u{202e}line",
            "client=alice\\n2026",
            "email=\"alice\\n2026",
            "error=outer\\nERROR forged: inner\\r\\nsource",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text:?}");
        }
    }
}
