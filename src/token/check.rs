//! `orgkey token check`: reads the security attributes of every private key
//! in the token and judges them against the role orgkey gave the key.

use super::error::CkResultExt;
use super::{Token, TokenError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};

/// The role of an org key object, as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Certify-only primary key: SIGN only.
    Certify,
    /// Data-signing subkey: SIGN only.
    Sign,
    /// Encryption subkey: DERIVE (ECDH) or DECRYPT (RSA) only.
    Encrypt,
}

impl KeyRole {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            KeyRole::Certify => "certify",
            KeyRole::Sign => "sign",
            KeyRole::Encrypt => "encrypt",
        }
    }
}

/// One private key object and the verdict on it.
#[derive(Debug, Clone)]
pub struct KeyObjectReport {
    /// CKA_LABEL
    pub label: String,
    /// CKA_ID, hex
    pub id: String,
    /// Key type name
    pub key_type: String,
    /// The org key role, if the object is one of ours
    pub role: Option<KeyRole>,
    /// Boolean security attributes as read (None: the token did not say)
    pub attributes: Vec<(&'static str, Option<bool>)>,
    /// Violations: the check fails if any object has one.
    pub problems: Vec<String>,
    /// Weaker findings worth knowing.
    pub warnings: Vec<String>,
}

const FLAGS: &[(&str, AttributeType)] = &[
    ("TOKEN", AttributeType::Token),
    ("PRIVATE", AttributeType::Private),
    ("SENSITIVE", AttributeType::Sensitive),
    ("ALWAYS_SENSITIVE", AttributeType::AlwaysSensitive),
    ("EXTRACTABLE", AttributeType::Extractable),
    ("NEVER_EXTRACTABLE", AttributeType::NeverExtractable),
    ("WRAP_WITH_TRUSTED", AttributeType::WrapWithTrusted),
    ("MODIFIABLE", AttributeType::Modifiable),
    ("SIGN", AttributeType::Sign),
    ("SIGN_RECOVER", AttributeType::SignRecover),
    ("DECRYPT", AttributeType::Decrypt),
    ("DERIVE", AttributeType::Derive),
    ("UNWRAP", AttributeType::Unwrap),
];

fn flag_value(a: &Attribute) -> Option<(AttributeType, bool)> {
    Some(match a {
        Attribute::Token(v) => (AttributeType::Token, *v),
        Attribute::Private(v) => (AttributeType::Private, *v),
        Attribute::Sensitive(v) => (AttributeType::Sensitive, *v),
        Attribute::AlwaysSensitive(v) => (AttributeType::AlwaysSensitive, *v),
        Attribute::Extractable(v) => (AttributeType::Extractable, *v),
        Attribute::NeverExtractable(v) => (AttributeType::NeverExtractable, *v),
        Attribute::WrapWithTrusted(v) => (AttributeType::WrapWithTrusted, *v),
        Attribute::Modifiable(v) => (AttributeType::Modifiable, *v),
        Attribute::Sign(v) => (AttributeType::Sign, *v),
        Attribute::SignRecover(v) => (AttributeType::SignRecover, *v),
        Attribute::Decrypt(v) => (AttributeType::Decrypt, *v),
        Attribute::Derive(v) => (AttributeType::Derive, *v),
        Attribute::Unwrap(v) => (AttributeType::Unwrap, *v),
        _ => return None,
    })
}

/// Judges one object's flags. `get(name)` returns the flag as read.
fn judge(
    role: Option<KeyRole>,
    get: impl Fn(&str) -> Option<bool>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let is = |n: &str| get(n) == Some(true);
    let not = |n: &str| get(n) == Some(false);
    if !is("SENSITIVE") {
        problems.push("readable: CKA_SENSITIVE is not true".into());
    }
    if !is("PRIVATE") {
        problems.push("visible without login: CKA_PRIVATE is not true".into());
    }
    if !not("EXTRACTABLE") && !is("WRAP_WITH_TRUSTED") {
        problems.push(
            "extractable without CKA_WRAP_WITH_TRUSTED: any wrapping key can export it".into(),
        );
    }
    if not("ALWAYS_SENSITIVE") {
        warnings.push("CKA_ALWAYS_SENSITIVE is false: the key was readable at some point".into());
    }
    let Some(role) = role else {
        warnings.push("not an org key object of this appliance".into());
        return;
    };
    let allowed: &[&str] = match role {
        KeyRole::Certify | KeyRole::Sign => &["SIGN"],
        KeyRole::Encrypt => &["DERIVE", "DECRYPT"],
    };
    for usage in ["SIGN", "SIGN_RECOVER", "DECRYPT", "DERIVE", "UNWRAP"] {
        if !allowed.contains(&usage) && !not(usage) {
            problems.push(format!(
                "usage beyond its role ({}): CKA_{usage} is not false",
                role.name()
            ));
        }
    }
    if !allowed.iter().any(|u| is(u)) {
        problems.push(format!(
            "cannot do its job ({}): none of {} is true",
            role.name(),
            allowed.join("/")
        ));
    }
    if !not("MODIFIABLE") {
        warnings
            .push("CKA_MODIFIABLE is not false: a PIN holder could change its attributes".into());
    }
}

impl Token {
    /// Reports every private key object in the token; `roles` maps the
    /// CKA_IDs of org key objects to their role. Needs a login.
    pub fn inspect_private_keys(
        &self,
        roles: &[(Vec<u8>, KeyRole)],
    ) -> Result<Vec<KeyObjectReport>, TokenError> {
        self.with_session(|s| {
            let handles = s
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .ck("listing private keys")?;
            let mut types: Vec<AttributeType> = FLAGS.iter().map(|(_, t)| *t).collect();
            types.extend([
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
            ]);
            let mut out = Vec::new();
            for h in handles {
                let attrs = s.get_attributes(h, &types).ck("reading key attributes")?;
                let mut label = String::new();
                let mut id = Vec::new();
                let mut key_type = String::from("?");
                let mut flags = Vec::new();
                for a in &attrs {
                    match a {
                        Attribute::Label(l) => label = String::from_utf8_lossy(l).into_owned(),
                        Attribute::Id(i) => id = i.clone(),
                        Attribute::KeyType(k) => key_type = k.to_string(),
                        other => {
                            if let Some(f) = flag_value(other) {
                                flags.push(f);
                            }
                        }
                    }
                }
                let attributes: Vec<(&'static str, Option<bool>)> = FLAGS
                    .iter()
                    .map(|(n, t)| (*n, flags.iter().find(|(ft, _)| ft == t).map(|(_, v)| *v)))
                    .collect();
                let role = roles.iter().find(|(rid, _)| *rid == id).map(|(_, r)| *r);
                let get = |n: &str| {
                    attributes
                        .iter()
                        .find(|(an, _)| *an == n)
                        .and_then(|(_, v)| *v)
                };
                let (mut problems, mut warnings) = (Vec::new(), Vec::new());
                judge(role, get, &mut problems, &mut warnings);
                out.push(KeyObjectReport {
                    label,
                    id: hex::encode(&id),
                    key_type,
                    role,
                    attributes,
                    problems,
                    warnings,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(role: Option<KeyRole>, set: &[(&str, bool)]) -> (Vec<String>, Vec<String>) {
        let get = |n: &str| set.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let (mut p, mut w) = (Vec::new(), Vec::new());
        judge(role, get, &mut p, &mut w);
        (p, w)
    }

    const GOOD_SIGN: &[(&str, bool)] = &[
        ("SENSITIVE", true),
        ("PRIVATE", true),
        ("ALWAYS_SENSITIVE", true),
        ("EXTRACTABLE", true),
        ("WRAP_WITH_TRUSTED", true),
        ("MODIFIABLE", false),
        ("SIGN", true),
        ("SIGN_RECOVER", false),
        ("DECRYPT", false),
        ("DERIVE", false),
        ("UNWRAP", false),
    ];

    #[test]
    fn org_template_passes() {
        assert_eq!(run(Some(KeyRole::Sign), GOOD_SIGN), (vec![], vec![]));
    }

    #[test]
    fn each_violation_is_named() {
        let with = |k: &str, v: bool| {
            let mut s = GOOD_SIGN.to_vec();
            s.retain(|(n, _)| *n != k);
            s.push((Box::leak(k.to_string().into_boxed_str()), v));
            s
        };
        let (p, _) = run(Some(KeyRole::Sign), &with("WRAP_WITH_TRUSTED", false));
        assert!(p[0].contains("extractable without"), "{p:?}");
        let (p, _) = run(Some(KeyRole::Certify), &with("DECRYPT", true));
        assert!(p[0].contains("CKA_DECRYPT"), "{p:?}");
        let (p, _) = run(Some(KeyRole::Encrypt), GOOD_SIGN);
        assert!(p.iter().any(|m| m.contains("CKA_SIGN ")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("cannot do its job")), "{p:?}");
        let (p, _) = run(Some(KeyRole::Sign), &with("SENSITIVE", false));
        assert!(p[0].starts_with("readable"), "{p:?}");
        // A flag the token does not report counts as not safe.
        let mut missing = GOOD_SIGN.to_vec();
        missing.retain(|(n, _)| *n != "UNWRAP");
        let (p, _) = run(Some(KeyRole::Sign), &missing);
        assert!(p[0].contains("CKA_UNWRAP"), "{p:?}");
    }

    #[test]
    fn foreign_keys_are_judged_on_secrecy_only() {
        let mut s = GOOD_SIGN.to_vec();
        s.push(("DECRYPT", true));
        let (p, w) = run(None, &s);
        assert!(p.is_empty(), "{p:?}");
        assert!(w[0].contains("not an org key"));
    }
}
