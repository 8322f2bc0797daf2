//! Strict syntax of the email addresses that go into certificates (subject
//! emailAddress and subjectAltName rfc822Name): an RFC 5321 dot-atom local
//! part, exactly one `@`, and a host name of letters, digits and hyphens.
//! Anything looser lets a requester smuggle a second `@`, a NUL or a line
//! break into a certificate, the store's comma-separated email list and the
//! audit log.

/// Longest local part (RFC 5321, 4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 1035 name, without a trailing dot).
const MAX_DOMAIN: usize = 253;
/// Longest address (RFC 5321 path limit minus the angle brackets).
const MAX_ADDRESS: usize = 254;

/// `atext` of RFC 5322 besides letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Checks that `addr` is a plain mailbox `local@domain`: exactly one `@`,
/// a dot-atom local part of printable ASCII (letters, digits and
/// ``!#$%&'*+-/=?^_`{|}~``, dots only between them: no spaces, control
/// characters, quotes, brackets, commas or backslashes) and a domain that is
/// a host name (dot-separated labels of 1-63 letters, digits and hyphens,
/// no hyphen at either end of a label, no trailing dot). Returns why not.
pub fn check_mailbox(addr: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{addr:?} is not a valid email address: {why}"));
    if addr.len() > MAX_ADDRESS {
        return refuse("longer than 254 characters");
    }
    let mut parts = addr.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return refuse("it must contain exactly one @");
    };
    if local.is_empty() || local.len() > MAX_LOCAL {
        return refuse("the part before the @ must be 1-64 characters");
    }
    if !local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || ATEXT_SPECIALS.contains(c))
    {
        return refuse(
            "the part before the @ may hold only letters, digits, dots and !#$%&'*+-/=?^_`{|}~ \
             (no spaces, control characters, quotes, brackets or commas)",
        );
    }
    if local.split('.').any(str::is_empty) {
        return refuse(
            "the part before the @ must not start or end with a dot or hold two dots in a row",
        );
    }
    if !is_host_name(domain) {
        return refuse(
            "the part after the @ must be a host name (dot-separated labels of 1-63 letters, \
             digits and hyphens, not starting or ending with a hyphen)",
        );
    }
    Ok(())
}

fn is_host_name(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::check_mailbox;

    #[test]
    fn plain_mailboxes_pass() {
        for ok in [
            "alice@example.com",
            "a.b-c+tag@mail.example.com",
            "o'brien@example.com",
            "x!#$%&'*+-/=?^_`{|}~@example.com",
            "1@xn--bcher-kva.example",
            "a@localhost",
        ] {
            assert_eq!(check_mailbox(ok), Ok(()), "{ok}");
        }
        let long_local = format!("{}@example.com", "a".repeat(64));
        assert_eq!(check_mailbox(&long_local), Ok(()));
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        for (bad, why) in [
            ("victim@bank.com@example.com", "exactly one @"),
            ("example.com", "exactly one @"),
            ("@example.com", "1-64"),
            ("a\0b@example.com", "control characters"),
            ("eve\nforged@example.com", "control characters"),
            ("eve\r@example.com", "control characters"),
            ("eve\t@example.com", "control characters"),
            ("a b@example.com", "no spaces"),
            ("\"a\"@example.com", "quotes"),
            ("<a>@example.com", "brackets"),
            ("a(b)@example.com", "brackets"),
            ("a[b]@example.com", "brackets"),
            ("a,b@example.com", "commas"),
            ("a\\b@example.com", "only letters"),
            ("a;b@example.com", "only letters"),
            ("a:b@example.com", "only letters"),
            ("ali\u{202e}ce@example.com", "only letters"),
            ("äli@example.com", "only letters"),
            (".a@example.com", "dot"),
            ("a.@example.com", "dot"),
            ("a..b@example.com", "dot"),
            ("a@", "host name"),
            ("a@example.com.", "host name"),
            ("a@.example.com", "host name"),
            ("a@exa_mple.com", "host name"),
            ("a@-example.com", "host name"),
            ("a@example-.com", "host name"),
            ("a@exa mple.com", "host name"),
            ("a@example.com\n", "host name"),
            ("a@[127.0.0.1]", "host name"),
            ("a@ex\0ample.com", "host name"),
        ] {
            let e = check_mailbox(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(
                !e.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "the message shows the address escaped: {e}"
            );
        }
        assert!(check_mailbox(&format!("{}@example.com", "a".repeat(65))).is_err());
        let label = "a".repeat(64);
        assert!(check_mailbox(&format!("a@{label}.com")).is_err());
        assert!(check_mailbox(&format!("a@{}", ["abc"; 70].join("."))).is_err());
    }
}
