//! Distinguished names in canonical form, for binding API clients to TLS
//! client certificates by subject and issuer (decision 0022). An operator's
//! RFC 4514 string and a certificate's DER name are both parsed into an
//! x509-cert `Name` and written out the same way, so two spellings of one
//! name (attribute names or OIDs, escapes, hex values, string types, case,
//! runs of spaces) give the same text, and different names different text.
//!
//! The canonical form is itself an RFC 4514 string, most specific RDN
//! first: `CN=gateway,O=example org`. Attribute types are the RFC 4514
//! short names where there is one and dotted OIDs otherwise; string values
//! (PrintableString, UTF8String, IA5String, BMPString) are compared the way
//! X.520's caseIgnoreMatch compares them, without full RFC 4518 stringprep:
//! surrounding white space dropped, inner runs of white space one space,
//! lower case. Other values (other string types included) are `#` and the
//! hex of their DER. The AVAs of a multi-valued RDN are sorted.

use super::X509Error;
use der::asn1::{BmpString, Ia5StringRef, PrintableStringRef, Utf8StringRef};
use der::oid::ObjectIdentifier;
use der::oid::db::rfc4519;
use der::{Decode, Encode, Tag, Tagged};
use std::fmt::Write as _;
use std::str::FromStr;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::Certificate;
use x509_cert::name::Name;

/// RFC 4514 section 3's attribute type names.
const SHORT_NAMES: [(ObjectIdentifier, &str); 9] = [
    (rfc4519::CN, "CN"),
    (rfc4519::L, "L"),
    (rfc4519::ST, "ST"),
    (rfc4519::O, "O"),
    (rfc4519::OU, "OU"),
    (rfc4519::C, "C"),
    (rfc4519::STREET, "STREET"),
    (rfc4519::DC, "DC"),
    (rfc4519::UID, "UID"),
];

/// Parses an RFC 4514 distinguished name (`CN=gateway,O=Example`) and
/// returns it in canonical form. Empty names are refused: they would bind
/// nothing in particular.
pub fn canonical_dn(rfc4514: &str) -> Result<String, X509Error> {
    let name = Name::from_str(rfc4514).map_err(|e| {
        X509Error::Invalid(format!(
            "{rfc4514:?} is not an RFC 4514 distinguished name such as \"CN=gateway,O=Example\" \
             (no spaces around '=' or after ','; `openssl x509 -noout -subject -issuer -nameopt \
             RFC2253` prints a certificate's names this way): {e}"
        ))
    })?;
    if name.is_empty() {
        return Err(X509Error::Invalid(
            "the distinguished name must not be empty".into(),
        ));
    }
    canonical_name(&name)
}

/// The canonical subject and issuer DNs of a DER certificate.
pub fn certificate_dns(der_bytes: &[u8]) -> Result<(String, String), X509Error> {
    let cert = Certificate::from_der(der_bytes)
        .map_err(|e| X509Error::Invalid(format!("not a DER certificate: {e}")))?;
    let tbs = cert.tbs_certificate();
    Ok((
        canonical_name(tbs.subject())?,
        canonical_name(tbs.issuer())?,
    ))
}

fn canonical_name(name: &Name) -> Result<String, X509Error> {
    let mut rdns = Vec::with_capacity(name.len());
    for rdn in name.iter_rdn() {
        let mut avas = rdn
            .iter()
            .map(canonical_ava)
            .collect::<Result<Vec<_>, _>>()?;
        avas.sort();
        rdns.push(avas.join("+"));
    }
    // RFC 4514 writes the most specific RDN (the last in DER) first.
    rdns.reverse();
    Ok(rdns.join(","))
}

fn canonical_ava(ava: &AttributeTypeAndValue) -> Result<String, X509Error> {
    let mut out = match SHORT_NAMES.iter().find(|(oid, _)| *oid == ava.oid) {
        Some((_, short)) => (*short).to_string(),
        None => ava.oid.to_string(),
    };
    out.push('=');
    match string_value(ava) {
        Some(s) => escape_into(&mut out, &fold(&s)),
        None => {
            let der_bytes = ava
                .value
                .to_der()
                .map_err(|e| X509Error::Encoding(format!("an attribute value: {e}")))?;
            out.push('#');
            out.push_str(&hex::encode(der_bytes));
        }
    }
    Ok(out)
}

/// The value as text, for the string types that have one meaning as text.
fn string_value(ava: &AttributeTypeAndValue) -> Option<String> {
    let v = &ava.value;
    match v.tag() {
        Tag::PrintableString => v
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::Utf8String => v
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::Ia5String => v
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::BmpString => v.decode_as::<BmpString>().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// caseIgnoreMatch without stringprep: trimmed, inner white space runs
/// folded to one space, lower case.
fn fold(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// RFC 4514 section 2.4 escaping (the value is already trimmed, so only a
/// leading '#' and the special characters need it); control characters and
/// the other hidden ones of `text::is_hidden` (bidi controls, ...) as the
/// `\xx` escapes of their UTF-8 bytes, so a canonical name shows as what
/// it is wherever it is printed.
fn escape_into(out: &mut String, value: &str) {
    for (i, c) in value.chars().enumerate() {
        match c {
            '#' if i == 0 => out.push_str("\\#"),
            // x509-cert's parser takes `\\,` for an escaped backslash and a
            // separator; `\5c\,` it reads right.
            '\\' => out.push_str("\\5c"),
            '"' | '+' | ',' | ';' | '<' | '>' | '=' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || crate::text::is_hidden(c) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_are_one_canonical_form() {
        let canon = canonical_dn("CN=Mail  Gateway ,O=Example Org,C=DE").unwrap();
        assert_eq!(canon, "CN=mail gateway,O=example org,C=de");
        for same in [
            "cn=MAIL GATEWAY,o=EXAMPLE ORG,c=DE",
            "2.5.4.3=mail gateway,2.5.4.10=example org,2.5.4.6=de",
            "commonName=Mail Gateway,organizationName=Example Org,countryName=DE",
            // UTF8String "mail gateway" as hex DER.
            "CN=#0c0c6d61696c2067617465776179,O=Example Org,C=DE",
            "CN=Mail\\20Gateway,O=Example\\ Org,C=DE",
        ] {
            match canonical_dn(same) {
                Ok(c) => assert_eq!(c, canon, "{same}"),
                // Long attribute names are x509-cert's business; the test
                // only needs those it knows to agree.
                Err(e) => assert!(same.starts_with("commonName"), "{same}: {e}"),
            }
        }
        for different in [
            "CN=mail gateway,O=example org",
            "O=example org,CN=mail gateway,C=de",
            "CN=mail gateway2,O=example org,C=de",
            "CN=mail gateway+UID=1,O=example org,C=de",
        ] {
            assert_ne!(canonical_dn(different).unwrap(), canon, "{different}");
        }
        // Multi-valued RDNs compare as sets.
        assert_eq!(
            canonical_dn("UID=7+CN=x,O=y").unwrap(),
            canonical_dn("CN=x+UID=7,O=y").unwrap()
        );
    }

    #[test]
    fn the_canonical_form_parses_back_to_itself() {
        for dn in [
            "CN=a\\,b\\+c\\\"d\\<e\\>f\\;g,O=x",
            "CN=\\#hash,OU=one+OU=two,DC=example,DC=com",
            "1.2.840.113549.1.9.1=#16086140622e6578616d,CN=x",
            "STREET=1 Main St,L=Town,ST=State,C=DE,UID=u1",
            "CN=ctl\\01inside",
            "CN=back\\5c\\,slash+UID=\\5c,O=x",
            "CN=bidi\\e2\\80\\aeinside",
        ] {
            let c = canonical_dn(dn).unwrap();
            assert_eq!(canonical_dn(&c).unwrap(), c, "{dn} -> {c}");
        }
    }

    #[test]
    fn names_that_are_not_rfc_4514_are_refused_with_a_hint() {
        for bad in ["", "gateway", "CN = x", "XYZ=1", "/CN=x/O=y"] {
            let e = canonical_dn(bad).unwrap_err().to_string();
            assert!(
                e.contains("RFC 4514") || e.contains("must not be empty"),
                "{bad:?}: {e}"
            );
        }
    }
}
