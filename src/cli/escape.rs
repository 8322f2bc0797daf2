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
use tracing_subscriber::fmt::MakeWriter;
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

/// A JSON log line with every hidden character outside the C0 controls
/// (which JSON encoding escapes already) written as a `\uXXXX` escape: DEL,
/// the C1 controls, bidi and other invisible format characters, line and
/// paragraph separators. In a JSON document any non-ASCII character stands
/// inside a string, so the escape is always valid there and decodes to the
/// same character: the values are unchanged, the line holds no raw hidden
/// character. Raw C0 controls in the line are structure (its final line
/// feed) and stay.
pub(crate) fn json_line(line: &str) -> Cow<'_, str> {
    let escaped = |c: char| c >= '\u{7f}' && crate::text::is_hidden(c);
    if !line.chars().any(escaped) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if escaped(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The JSON format's writer: each event's line through [`json_line`].
/// tracing's fmt layer formats an event into one buffer and writes it whole,
/// so every write here is one or more complete lines.
#[derive(Debug, Clone)]
pub(crate) struct JsonHiddenEscapes<M>(pub(crate) M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for JsonHiddenEscapes<M> {
    type Writer = JsonHiddenEscapesWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonHiddenEscapesWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        JsonHiddenEscapesWriter(self.0.make_writer_for(meta))
    }
}

/// See [`JsonHiddenEscapes`].
pub(crate) struct JsonHiddenEscapesWriter<W>(W);

impl<W: std::io::Write> std::io::Write for JsonHiddenEscapesWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(json_line(text).as_bytes())?,
            // Not from the JSON formatter (which writes UTF-8): as it is.
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
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
        let subscriber = super::super::log_subscriber(
            "info",
            super::super::LogFormat::Text,
            move || buf.clone(),
            Some(false),
        );
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

    #[test]
    fn a_json_log_line_is_one_object_without_raw_hidden_characters() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = super::super::log_subscriber(
            "info",
            super::super::LogFormat::Json,
            move || buf.clone(),
            None,
        );
        let evil = "alice\n2026-01-01T00:00:00Z  INFO orgkey: forged \u{202e}line\u{7f}\u{85}\u{2028}\u{1b}[2J\t\"}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(client = %evil, email = ?evil, count = 3, "refused {evil}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        assert!(
            !text
                .trim_end_matches('\n')
                .chars()
                .any(crate::text::is_hidden),
            "a raw hidden character in {text:?}"
        );
        for want in ["\\u202e", "\\u007f", "\\u0085", "\\u2028", "\\u001b", "\\n"] {
            assert!(text.contains(want), "missing {want:?} in {text:?}");
        }
        // The escapes decode to exactly what was logged.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], module_path!());
        assert_eq!(v["fields"]["client"], evil);
        assert_eq!(v["fields"]["email"], format!("{evil:?}"));
        assert_eq!(v["fields"]["count"], 3);
        assert_eq!(v["fields"]["message"], format!("refused {evil}"));
        assert!(v["timestamp"].is_string(), "{v}");
        // Other text, also outside the BMP, passes as it is.
        assert_eq!(
            json_line("{\"a\":\"ümlaut ✓ 😀\"}\n"),
            "{\"a\":\"ümlaut ✓ 😀\"}\n"
        );
        assert_eq!(json_line("\"\u{e0001}\""), "\"\u{e0001}\"");
    }
}
