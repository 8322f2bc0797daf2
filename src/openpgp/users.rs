//! User keys of the managed domains: a submitted certificate is parsed and
//! judged, merged with the stored copy, and its managed user IDs are
//! certified by the org key's certify-only primary (in the token). Pruning
//! keeps one current org certification per user ID and issuer, so renewals
//! never pile up.

use super::token_signer::SeamSigner;
use super::{OrgKey, PgpError, PgpResultExt, Signed, check_token_signature};
use crate::signer::Signer;
use pgp::cert::prelude::*;
use pgp::packet::signature::SignatureBuilder;
use pgp::packet::{Packet, Signature};
use pgp::parse::Parse;
use pgp::policy::StandardPolicy;
use pgp::serialize::SerializeInto;
use pgp::types::{RevocationStatus, SignatureType};
use pgp::{Fingerprint, KeyHandle};
use sequoia_openpgp as pgp;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// A user ID in canonical form: `Name <address>`, `<address>` or a bare
/// `address`. See [`parse_user_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalUserId {
    /// The text before ` <address>` (a name, possibly with a comment);
    /// `None` for `<address>` and for a bare address.
    pub name: Option<String>,
    /// The address, lower-case (ASCII only, so every normalization agrees).
    pub email: String,
}

/// Longest local part (RFC 5321, section 4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 1035 less the root label's length bytes).
const MAX_DOMAIN: usize = 253;
/// Longest domain label (RFC 1035).
const MAX_LABEL: usize = 63;

/// Characters whose Unicode compatibility or canonical decomposition
/// contains `@`, `<` or `>` (fullwidth and small forms, not-less-than and
/// not-greater-than): a name holding them shows a look-alike address.
fn looks_like_address_syntax(c: char) -> bool {
    matches!(
        c,
        '\u{FF20}'
            | '\u{FE6B}'
            | '\u{FF1C}'
            | '\u{FF1E}'
            | '\u{FE64}'
            | '\u{FE65}'
            | '\u{226E}'
            | '\u{226F}'
    )
}

/// `U+XXXX`: names a character in a message without writing it raw.
fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// A character of an address for a message: printable ASCII as itself
/// in quotes, anything else as its code point.
fn shown(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        code_point(c)
    }
}

/// RFC 5322 `atext`, the characters of a dot-atom besides `.`; exactly the
/// set GnuPG accepts in the local part of a bare address.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Checks an address and returns it lower-cased: one `@`; a local part
/// that is an ASCII dot-atom of at most 64 characters; a domain that is an
/// ASCII host name (letters, digits and `-` in dot-separated labels of 1 to
/// 63 characters that neither begin nor end with `-`, at least two labels,
/// the last not all digits, at most 253 characters; internationalized
/// domains in their `xn--` form).
///
/// Non-ASCII addresses are refused, not normalized: GnuPG lower-cases only
/// ASCII and compares domains as written, sequoia lower-cases all of
/// Unicode and converts domains to punycode, so the same user ID would be
/// filed under different addresses by different relying parties (and an
/// S/MIME rfc822Name cannot carry them either).
fn canonical_address(addr: &str) -> Result<String, String> {
    if addr.is_empty() {
        return Err("the address is empty".into());
    }
    let ats = addr.matches('@').count();
    if ats != 1 {
        return Err(format!(
            "the address must have exactly one '@' (it has {ats})"
        ));
    }
    let (local, domain) = addr.split_once('@').unwrap_or((addr, ""));
    if local.is_empty() {
        return Err("the address has no local part before '@'".into());
    }
    if domain.is_empty() {
        return Err("the address has no domain after '@'".into());
    }
    if let Some(c) = local.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "the local part of the address has a non-ASCII character ({}): OpenPGP \
             implementations normalize those differently, so such addresses are not certified",
            code_point(c)
        ));
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(format!(
            "the local part of the address has a character that is not allowed ({}): use \
             letters, digits, '.' and !#$%&'*+-/=?^_`{{|}}~",
            shown(c)
        ));
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(format!(
            "the local part of the address is longer than {MAX_LOCAL_PART} characters"
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(
            "the local part of the address must not begin or end with '.' or contain '..'".into(),
        );
    }
    if let Some(c) = domain.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "the domain has a non-ASCII character ({}): write an internationalized domain in \
             its ASCII (xn--) form",
            code_point(c)
        ));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(format!("the domain is longer than {MAX_DOMAIN} characters"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let host_name = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= MAX_LABEL
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !host_name {
        return Err(
            "the domain is not a host name: letters, digits and '-' in at least two \
             dot-separated labels of 1 to 63 characters, none beginning or ending with '-'"
                .into(),
        );
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the domain's last label is all digits (not a host name)".into());
    }
    Ok(addr.to_ascii_lowercase())
}

/// Reads a user ID in canonical form: `Name <address>` (one space before
/// `<`, the `>` last), `<address>`, or a bare `address`, with no `<`, `>`
/// or `@` anywhere else, no control, invisible or bidirectional formatting
/// characters, and an address as [`canonical_address`] wants it. A name may
/// carry a comment (`Name (comment) <address>`, as GnuPG writes it) and
/// quotes (`"Name" <address>`): with `<`, `>` and `@` only around and in
/// the address, they cannot hide another one.
///
/// Why canonical only: implementations read other forms differently. GnuPG
/// takes the text from the first `<` to the next `>`, while sequoia parses
/// RFC 2822 style and accepts `@` in a name and `<` in a comment, so
/// `Mallory (<ceo@example.com>) <mallory@example.com>` is Mallory's address
/// to sequoia and the CEO's to GnuPG, and `ceo@example.com
/// <mallory@example.com>` shows the CEO's address to a reader. In canonical
/// form they all read the same address.
///
/// `Ok(None)`: the user ID holds none of `@`, `<` and `>`, so no
/// implementation reads an address in it (a bare name): nothing to certify
/// and nothing to refuse. `Err(why)`: it holds something address-like but
/// is not in canonical form; `why` says what is wrong and never quotes the
/// user ID, naming unusual characters by code point.
pub fn parse_user_id(uid: &[u8]) -> Result<Option<CanonicalUserId>, String> {
    if !uid.iter().any(|b| matches!(b, b'@' | b'<' | b'>')) {
        return Ok(None);
    }
    let s = std::str::from_utf8(uid).map_err(|_| "it is not valid UTF-8".to_string())?;
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("it has a control character ({})", code_point(c)));
    }
    if let Some(c) = s.chars().find(|&c| crate::text::is_invisible_format(c)) {
        return Err(format!(
            "it has an invisible or bidirectional formatting character ({})",
            code_point(c)
        ));
    }
    if let Some(c) = s.chars().find(|&c| looks_like_address_syntax(c)) {
        return Err(format!(
            "it has a look-alike of '@', '<' or '>' ({})",
            code_point(c)
        ));
    }
    let opens = s.matches('<').count();
    let closes = s.matches('>').count();
    if opens == 0 && closes == 0 {
        if s.chars().any(char::is_whitespace) {
            return Err(
                "it has an address that is neither alone nor in angle brackets after the name"
                    .into(),
            );
        }
        return canonical_address(s).map(|email| Some(CanonicalUserId { name: None, email }));
    }
    if opens > 1 || closes > 1 {
        return Err("it has more than one '<' or '>': only one address in angle brackets".into());
    }
    let (Some(open), Some(close)) = (s.find('<'), s.find('>')) else {
        return Err("its angle brackets do not pair up".into());
    };
    if close < open {
        return Err("its angle brackets do not pair up".into());
    }
    if close + 1 != s.len() {
        return Err("it has text after the closing '>'".into());
    }
    let name = &s[..open];
    let addr = &s[open + 1..close];
    if name.contains('@') {
        return Err(
            "it has '@' outside the angle brackets: the name or comment must not hold an address"
                .into(),
        );
    }
    let name = if name.is_empty() {
        None
    } else {
        let Some(n) = name.strip_suffix(' ') else {
            return Err("the name must be followed by a single space before '<'".into());
        };
        if n.is_empty() || n.starts_with(char::is_whitespace) || n.ends_with(char::is_whitespace) {
            return Err(
                "the name must not be empty or begin or end with white space (write \
                 `Name <address>` or `<address>`)"
                    .into(),
            );
        }
        Some(n.to_string())
    };
    let email = canonical_address(addr)?;
    Ok(Some(CanonicalUserId { name, email }))
}

/// GnuPG's reading of a user ID's address (`mailbox_from_userid`): the
/// text from the first `<` to the next `>`, else the whole user ID if it
/// looks like a bare address; ASCII lower-cased.
fn gnupg_mailbox(uid: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(uid);
    let mailbox = match s.find('<') {
        Some(open) => {
            let rest = &s[open + 1..];
            &rest[..rest.find('>')?]
        }
        None => &s,
    };
    let plausible = mailbox.matches('@').count() == 1
        && !mailbox.starts_with('@')
        && !mailbox.ends_with('@')
        && !mailbox.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then(|| mailbox.to_ascii_lowercase())
}

/// The canonical address of `uid` (`None` if it has none or is not in
/// canonical form) and, if it is address-like but not canonical, why.
/// Sequoia's reading must agree, as a second opinion on the parser.
fn canonical_email(uid: &pgp::packet::UserID) -> (Option<String>, Option<String>) {
    match parse_user_id(uid.value()) {
        Ok(None) => (None, None),
        Err(why) => (None, Some(why)),
        Ok(Some(c)) => match uid.email_normalized() {
            Ok(Some(e)) if e == c.email => (Some(c.email), None),
            _ => (None, Some("sequoia reads another address in it".into())),
        },
    }
}

/// Every address an OpenPGP implementation may read in `uid`: the canonical
/// one, GnuPG's, and sequoia's normalized one. For reserving addresses,
/// where reading too many is the safe side.
pub(super) fn user_id_readings(uid: &pgp::packet::UserID) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let readings = [
        parse_user_id(uid.value()).ok().flatten().map(|c| c.email),
        gnupg_mailbox(uid.value()),
        uid.email_normalized().ok().flatten(),
    ];
    for e in readings.into_iter().flatten() {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// A user's public OpenPGP certificate.
#[derive(Clone)]
pub struct UserKey {
    cert: Cert,
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// One user ID of a user key as orgkey sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdInfo {
    /// The user ID text (invalid UTF-8 replaced).
    pub user_id: String,
    /// The lower-case address, if the user ID is in canonical form (see
    /// [`parse_user_id`]) and has one.
    pub email: Option<String>,
    /// Why it cannot be certified, if it cannot (not in canonical form,
    /// revoked, no valid self-signature).
    pub problem: Option<String>,
    /// Whether `problem` is about the form: the user ID holds something
    /// address-like that is not in canonical form.
    pub non_canonical: bool,
}

/// A certification just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// Normalized email of the certified user ID.
    pub email: String,
    /// The certified user ID.
    pub user_id: String,
    /// When the certification expires.
    pub expires: SystemTime,
}

/// Why a user ID was not certified, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not in canonical form: implementations may read different addresses.
    NonCanonical,
    /// Its address belongs to the organization (an org key or the org cert).
    Reserved,
    /// The caller's selection said no (not a managed domain, removed,
    /// inactive).
    NotSelected,
    /// Revoked, or without a valid self-signature.
    NotValid,
}

/// A user ID that was not certified, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The user ID text (invalid UTF-8 replaced; may hold control
    /// characters: show it escaped, e.g. with `{:?}`).
    pub user_id: String,
    /// Why (never quotes the user ID).
    pub reason: String,
    /// The kind of reason.
    pub kind: RefusalKind,
    /// The address orgkey files the user ID under: the canonical one, or,
    /// for a user ID not in canonical form, sequoia's reading, which earlier
    /// versions certified and stored users under (so stored users may
    /// still name it). `None` if there is neither.
    pub email: Option<String>,
}

/// What [`certify`] did.
#[derive(Debug, Clone)]
pub struct CertifyOutcome {
    /// The key with its new certifications (pruned).
    pub key: UserKey,
    /// User IDs certified now.
    pub certified: Vec<Certification>,
    /// User IDs with an address (or something address-like) that were not
    /// certified.
    pub refused: Vec<Refusal>,
    /// Org certifications removed from user IDs that must not carry one
    /// (not in canonical form, or a reserved address): made before those
    /// were refused.
    pub withdrawn: usize,
}

/// What to certify and for how long.
pub struct CertifyRequest<'a> {
    /// Signature creation time (whole seconds).
    pub now: SystemTime,
    /// Certification lifetime (capped at the org key's expiry).
    pub validity: Duration,
    /// Decides, per normalized email, whether to certify it; `Err` gives
    /// the reason it is not (e.g. "not in a managed domain").
    pub select: &'a (dyn Fn(&str) -> Result<(), String> + Sync),
    /// Addresses of the organization itself (normalized email -> why):
    /// never certified on a user key, whatever `select` says, and org
    /// certifications already on them are removed.
    pub reserved: &'a HashMap<String, String>,
    /// Fingerprints of every org key (current and superseded): their
    /// certifications are the ones pruning keeps to the newest.
    pub org_fingerprints: &'a [String],
}

fn is_certification(t: SignatureType) -> bool {
    matches!(
        t,
        SignatureType::GenericCertification
            | SignatureType::PersonaCertification
            | SignatureType::CasualCertification
            | SignatureType::PositiveCertification
    )
}

fn parse_fingerprints(fprs: &[String]) -> Vec<KeyHandle> {
    fprs.iter()
        .filter_map(|f| f.parse::<Fingerprint>().ok())
        .map(KeyHandle::from)
        .collect()
}

fn issuer_index(sig: &Signature, ours: &[KeyHandle]) -> Option<usize> {
    let issuers = sig.get_issuers();
    ours.iter()
        .position(|o| issuers.iter().any(|i| i.aliases(o)))
}

/// Revocations dated up to this far ahead of our clock still count: a key
/// revoked a moment ago on a machine whose clock runs a little fast must
/// not be certified.
const REVOCATION_SKEW: Duration = Duration::from_secs(300);

fn alive(sig: &Signature, now: SystemTime) -> bool {
    sig.signature_alive(now, Duration::ZERO).is_ok()
}

impl UserKey {
    /// Parses one armored or binary public certificate.
    pub fn parse(bytes: &[u8]) -> Result<UserKey, PgpError> {
        let cert = Cert::from_bytes(bytes).map_err(|e| {
            PgpError::Invalid(format!(
                "not a single OpenPGP certificate (armored or binary): {e:#}"
            ))
        })?;
        if cert.is_tsk() {
            return Err(PgpError::Invalid(
                "the certificate carries secret key material; send only the public certificate"
                    .into(),
            ));
        }
        Ok(UserKey { cert })
    }

    /// Upper-case hex fingerprint.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// Upper-case hex 64-bit key ID.
    pub fn keyid(&self) -> String {
        self.cert.keyid().to_hex()
    }

    /// ASCII-armored certificate.
    pub fn armored(&self) -> Result<String, PgpError> {
        let bytes = self
            .cert
            .armored()
            .to_vec()
            .pgp("armoring the certificate")?;
        String::from_utf8(bytes).map_err(|_| PgpError::Invalid("armor is not UTF-8".into()))
    }

    /// Binary certificate.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PgpError> {
        self.cert.to_vec().pgp("serializing the certificate")
    }

    /// Merges a newer copy of the same key (new subkeys, new
    /// self-signatures, revocations) into this one.
    pub fn merge(self, newer: UserKey) -> Result<UserKey, PgpError> {
        if self.cert.fingerprint() != newer.cert.fingerprint() {
            return Err(PgpError::Invalid(format!(
                "cannot merge {} into {}: different keys",
                newer.fingerprint(),
                self.fingerprint()
            )));
        }
        let cert = self
            .cert
            .merge_public(newer.cert)
            .pgp("merging certificates")?;
        Ok(UserKey { cert })
    }

    /// Refuses a key that is revoked, expired or too weak at `now`.
    pub fn check(&self, now: SystemTime) -> Result<(), String> {
        let policy = StandardPolicy::new();
        let vc = self.cert.with_policy(&policy, now).map_err(|e| {
            format!("the key is not acceptable under the standard policy (too weak, or no valid self-signature): {e:#}")
        })?;
        let revoked_soon = self
            .cert
            .with_policy(&policy, now + REVOCATION_SKEW)
            .is_ok_and(|v| matches!(v.revocation_status(), RevocationStatus::Revoked(_)));
        if revoked_soon || matches!(vc.revocation_status(), RevocationStatus::Revoked(_)) {
            return Err("the key is revoked".into());
        }
        vc.alive()
            .map_err(|e| format!("the key is expired or not yet valid: {e:#}"))?;
        Ok(())
    }

    /// Every user ID with its email and, if it cannot be certified, why.
    pub fn user_ids(&self, now: SystemTime) -> Vec<UserIdInfo> {
        let policy = StandardPolicy::new();
        let vc = self.cert.with_policy(&policy, now).ok();
        let vc_soon = self.cert.with_policy(&policy, now + REVOCATION_SKEW).ok();
        let revoked = |uid: &pgp::packet::UserID| {
            [&vc, &vc_soon].into_iter().flatten().any(|vc| {
                vc.userids().any(|v| {
                    v.userid() == uid
                        && matches!(v.revocation_status(), RevocationStatus::Revoked(_))
                })
            })
        };
        self.cert
            .userids()
            .map(|ua| {
                let uid = ua.userid();
                let (email, form) = canonical_email(uid);
                let valid = vc
                    .as_ref()
                    .is_some_and(|vc| vc.userids().any(|v| v.userid() == uid));
                let problem = if let Some(why) = &form {
                    Some(format!(
                        "the user ID is not in canonical form (`Name <address>` or a bare \
                         address), so OpenPGP implementations may read different addresses in \
                         it: {why}"
                    ))
                } else if revoked(uid) {
                    Some("the user ID is revoked".into())
                } else if !valid {
                    Some("the user ID has no valid self-signature under the standard policy".into())
                } else {
                    None
                };
                UserIdInfo {
                    user_id: String::from_utf8_lossy(uid.value()).into_owned(),
                    email,
                    problem,
                    non_canonical: form.is_some(),
                }
            })
            .collect()
    }

    /// Expiry of the newest org certification by `issuer` on the user ID
    /// with `email` that is alive at `now`.
    pub fn certification_expiry(
        &self,
        email: &str,
        issuer: &str,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let ours = parse_fingerprints(std::slice::from_ref(&issuer.to_string()));
        self.cert
            .userids()
            .filter(|ua| canonical_email(ua.userid()).0.as_deref() == Some(email))
            .flat_map(|ua| ua.certifications())
            .filter(|s| issuer_index(s, &ours).is_some() && alive(s, now))
            .max_by_key(|s| s.signature_creation_time())
            .and_then(|s| s.signature_expiration_time())
    }

    /// Removes org certifications that are expired at `now` or superseded by
    /// a newer one from the same org key on the same user ID. Everything
    /// else (self-signatures, other people's certifications) stays.
    pub fn prune(self, org_fingerprints: &[String], now: SystemTime) -> Result<UserKey, PgpError> {
        self.prune_and_withdraw(org_fingerprints, now, &HashSet::new())
            .map(|(key, _)| key)
    }

    /// [`UserKey::prune`], and also removes every org certification on the
    /// user IDs (raw values) in `withdraw`. Returns the key and how many
    /// live certifications `withdraw` removed.
    fn prune_and_withdraw(
        self,
        org_fingerprints: &[String],
        now: SystemTime,
        withdraw: &HashSet<Vec<u8>>,
    ) -> Result<(UserKey, usize), PgpError> {
        let ours = parse_fingerprints(org_fingerprints);
        let mut withdrawn = 0;
        let mut newest: HashMap<(Vec<u8>, usize), SystemTime> = HashMap::new();
        for ua in self.cert.userids() {
            for sig in ua.certifications() {
                if let (Some(i), Some(t)) =
                    (issuer_index(sig, &ours), sig.signature_creation_time())
                    && alive(sig, now)
                {
                    let e = newest.entry((ua.userid().value().to_vec(), i)).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        let mut current_uid: Option<Vec<u8>> = None;
        let mut kept: HashSet<(Vec<u8>, usize)> = HashSet::new();
        let mut packets = Vec::new();
        for p in self.cert.into_packets() {
            match &p {
                Packet::UserID(u) => current_uid = Some(u.value().to_vec()),
                Packet::Signature(sig) => {
                    if let (Some(uid), true) = (&current_uid, is_certification(sig.typ()))
                        && let Some(i) = issuer_index(sig, &ours)
                    {
                        if withdraw.contains(uid) {
                            withdrawn += usize::from(alive(sig, now));
                            continue;
                        }
                        let key = (uid.clone(), i);
                        let keep = alive(sig, now)
                            && sig.signature_creation_time().as_ref() == newest.get(&key)
                            && kept.insert(key);
                        if !keep {
                            continue;
                        }
                    }
                }
                _ => current_uid = None,
            }
            packets.push(p);
        }
        let cert = Cert::from_packets(packets.into_iter()).pgp("rebuilding the certificate")?;
        Ok((UserKey { cert }, withdrawn))
    }

    /// This key's entry in a machine-readable HKP index.
    pub fn hkp_index_entry(&self, now: SystemTime) -> String {
        super::hkp::index_entry(&self.cert, now)
    }

    /// The newest valid signing-capable key (primary or subkey) that is RSA
    /// or on a NIST curve, as a seam public key: the material an S/MIME
    /// certificate can be issued for. `None` if the key has none.
    pub fn x509_signing_key(&self, now: SystemTime) -> Option<crate::signer::PublicKey> {
        use crate::signer::{EcCurve, PublicKey};
        use pgp::crypto::mpi::PublicKey as M;
        use pgp::types::Curve;
        let policy = StandardPolicy::new();
        let vc = self.cert.with_policy(&policy, now).ok()?;
        let mut keys: Vec<_> = vc
            .keys()
            .for_signing()
            .alive()
            .revoked(false)
            .filter_map(|ka| {
                let k = ka.key();
                let pk = match k.mpis() {
                    M::ECDSA {
                        curve: Curve::NistP256,
                        q,
                    } => PublicKey::Ec {
                        curve: EcCurve::P256,
                        point: q.value().to_vec(),
                    },
                    M::ECDSA {
                        curve: Curve::NistP384,
                        q,
                    } => PublicKey::Ec {
                        curve: EcCurve::P384,
                        point: q.value().to_vec(),
                    },
                    M::RSA { e, n } => PublicKey::Rsa {
                        n: n.value().to_vec(),
                        e: e.value().to_vec(),
                    },
                    _ => return None,
                };
                Some((k.creation_time(), pk))
            })
            .collect();
        keys.sort_by_key(|(t, _)| *t);
        keys.pop().map(|(_, pk)| pk)
    }
}

/// Certifies every acceptable user ID that `req.select` picks with the org
/// key's primary (`certifier`, in the token), then prunes.
pub fn certify(
    org: &OrgKey,
    certifier: &dyn Signer,
    user: UserKey,
    req: &CertifyRequest<'_>,
) -> Result<CertifyOutcome, PgpError> {
    if user.cert.fingerprint().to_hex() == org.fingerprint() {
        return Err(PgpError::Unacceptable("this is the org key itself".into()));
    }
    user.check(req.now).map_err(PgpError::Unacceptable)?;
    let mut expires = req.now + req.validity;
    if let Some(org_expiry) = org.expires(req.now)? {
        if org_expiry <= req.now {
            return Err(PgpError::OrgKeyExpired);
        }
        expires = expires.min(org_expiry);
    }
    let period = expires
        .duration_since(req.now)
        .map_err(|_| PgpError::OrgKeyExpired)?;

    let mut signer = SeamSigner::new(certifier, org.primary_key().clone());
    let hash = signer.hash();
    let user_primary = user.cert.primary_key().key().clone();
    let mut certified = Vec::new();
    let mut refused = Vec::new();
    let mut withdraw: HashSet<Vec<u8>> = HashSet::new();
    let mut new_packets: Vec<Packet> = Vec::new();
    let infos = user.user_ids(req.now);
    for (ua, info) in user.cert.userids().zip(infos) {
        let refusal = |reason: String, kind, email: Option<String>| Refusal {
            user_id: info.user_id.clone(),
            reason,
            kind,
            email,
        };
        if info.non_canonical {
            let reason = info.problem.clone().unwrap_or_default();
            let legacy = ua.userid().email_normalized().ok().flatten();
            refused.push(refusal(reason, RefusalKind::NonCanonical, legacy));
            withdraw.insert(ua.userid().value().to_vec());
            continue;
        }
        let Some(email) = info.email.clone() else {
            continue;
        };
        let refusal = |reason, kind| refusal(reason, kind, Some(email.clone()));
        if let Some(reason) = req.reserved.get(&email) {
            refused.push(refusal(reason.clone(), RefusalKind::Reserved));
            withdraw.insert(ua.userid().value().to_vec());
            continue;
        }
        if let Err(reason) = (req.select)(&email) {
            refused.push(refusal(reason, RefusalKind::NotSelected));
            continue;
        }
        if let Some(reason) = info.problem.clone() {
            refused.push(refusal(reason, RefusalKind::NotValid));
            continue;
        }
        let sig = SignatureBuilder::new(SignatureType::GenericCertification)
            .set_hash_algo(hash)
            .set_signature_creation_time(req.now)
            .and_then(|b| b.set_signature_validity_period(period))
            .pgp("preparing a certification")?
            .sign_userid_binding(&mut signer, Some(&user_primary), ua.userid())
            .pgp("certifying a user ID")?;
        check_token_signature(
            &sig,
            &org.primary_key(),
            Signed::UserId(&user_primary, ua.userid()),
        )?;
        new_packets.push(ua.userid().clone().into());
        new_packets.push(sig.into());
        certified.push(Certification {
            email,
            user_id: info.user_id,
            expires,
        });
    }
    let cert = if new_packets.is_empty() {
        user.cert
    } else {
        user.cert
            .insert_packets(new_packets)
            .pgp("adding certifications")?
            .0
    };
    let (key, withdrawn) =
        UserKey { cert }.prune_and_withdraw(req.org_fingerprints, req.now, &withdraw)?;
    Ok(CertifyOutcome {
        key,
        certified,
        refused,
        withdrawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::cert::CertBuilder;
    use pgp::crypto::KeyPair;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + DAY * days as u32
    }

    fn key(uid: &str) -> (Cert, KeyPair) {
        let (cert, _) = CertBuilder::general_purpose(Some(uid))
            .set_creation_time(t(0))
            .generate()
            .unwrap();
        let pair = cert
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap();
        (cert, pair)
    }

    fn certification(by: &mut KeyPair, user: &Cert, at: u64, days: u64) -> Signature {
        let uid = user.userids().next().unwrap().userid().clone();
        SignatureBuilder::new(SignatureType::GenericCertification)
            .set_signature_creation_time(t(at))
            .unwrap()
            .set_signature_validity_period(DAY * days as u32)
            .unwrap()
            .sign_userid_binding(by, Some(user.primary_key().key()), &uid)
            .unwrap()
    }

    #[test]
    fn pruning_keeps_the_newest_live_org_certification_and_everything_else() {
        let (org, mut org_pair) = key("Org <org@example.com>");
        let (friend, mut friend_pair) = key("Friend <friend@example.org>");
        let (user, _) = key("Alice <alice@example.com>");
        let user = user.strip_secret_key_material();
        let uid = user.userids().next().unwrap().userid().clone();
        let sigs = [
            certification(&mut org_pair, &user, 1, 14), // expired by day 20
            certification(&mut org_pair, &user, 10, 14), // alive, superseded
            certification(&mut org_pair, &user, 12, 14), // alive, newest
            certification(&mut friend_pair, &user, 2, 1), // someone else's: untouched
        ];
        let mut packets: Vec<Packet> = Vec::new();
        for s in sigs {
            packets.push(uid.clone().into());
            packets.push(s.into());
        }
        let (cert, _) = user.insert_packets(packets).unwrap();
        let key = UserKey { cert };
        let ours = vec![org.fingerprint().to_hex()];
        let pruned = key.clone().prune(&ours, t(20)).unwrap();
        let left: Vec<(SystemTime, bool)> = pruned
            .cert
            .userids()
            .next()
            .unwrap()
            .certifications()
            .map(|s| {
                (
                    s.signature_creation_time().unwrap(),
                    s.get_issuers()
                        .iter()
                        .any(|i| i.aliases(KeyHandle::from(friend.fingerprint()))),
                )
            })
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&(t(12), false)));
        assert!(left.contains(&(t(2), true)));
        assert_eq!(
            pruned.certification_expiry("alice@example.com", &ours[0], t(20)),
            Some(t(26))
        );
        // Once the newest has expired too, no org certification is left.
        let later = key.prune(&ours, t(27)).unwrap();
        assert_eq!(
            later
                .cert
                .userids()
                .next()
                .unwrap()
                .certifications()
                .count(),
            1
        );
        assert_eq!(
            later.certification_expiry("alice@example.com", &ours[0], t(27)),
            None
        );
    }
}

#[cfg(test)]
mod canonical_form_tests {
    use super::*;
    use crate::signer::testing::SoftP256;
    use pgp::cert::CertBuilder;

    /// What `parse_user_id` should say.
    enum Want {
        /// No address at all: neither certified nor refused.
        Nothing,
        /// Canonical: (name, lower-case address).
        Canonical(Option<&'static str>, &'static str),
        /// Refused, the reason containing this.
        Refused(&'static str),
    }
    use Want::*;

    fn table() -> Vec<(&'static [u8], Want)> {
        vec![
            // What gpg, sequoia, Thunderbird and OpenPGP.js write.
            (
                b"Alice Example <alice@example.com>",
                Canonical(Some("Alice Example"), "alice@example.com"),
            ),
            (b"alice@example.com", Canonical(None, "alice@example.com")),
            (b"<alice@example.com>", Canonical(None, "alice@example.com")),
            (
                b"Alice Example (work) <alice@example.com>",
                Canonical(Some("Alice Example (work)"), "alice@example.com"),
            ),
            // Decided: quotes are harmless (no '<', '>' or '@' can hide in them).
            (
                b"\"Example, Alice\" <alice@example.com>",
                Canonical(Some("\"Example, Alice\""), "alice@example.com"),
            ),
            // Upper case is normalized (both gpg and sequoia lower-case ASCII).
            (
                b"Alice <Alice.Example@Example.COM>",
                Canonical(Some("Alice"), "alice.example@example.com"),
            ),
            (b"ALICE@EXAMPLE.COM", Canonical(None, "alice@example.com")),
            (
                b"Bob <bob+tag@mail.example.co.uk>",
                Canonical(Some("Bob"), "bob+tag@mail.example.co.uk"),
            ),
            (
                b"a!#$%&'*+-/=?^_`{|}~.z@example.com",
                Canonical(None, "a!#$%&'*+-/=?^_`{|}~.z@example.com"),
            ),
            // Non-ASCII names are fine, including right-to-left letters
            // (letters, not formatting controls).
            (
                "Jörg Müller <joerg@example.com>".as_bytes(),
                Canonical(Some("Jörg Müller"), "joerg@example.com"),
            ),
            (
                "דוד כהן <david@example.com>".as_bytes(),
                Canonical(Some("דוד כהן"), "david@example.com"),
            ),
            // Internationalized domains in their ASCII form.
            (
                b"Buch <info@xn--bcher-kva.example>",
                Canonical(Some("Buch"), "info@xn--bcher-kva.example"),
            ),
            // No address anywhere: nothing to certify, nothing to refuse.
            (b"Alice Example", Nothing),
            (b"Alice (no address) \t", Nothing),
            // Addresses other implementations read differently.
            (
                b"Mallory (<ceo@example.com>) <mallory4@example.com>",
                Refused("more than one '<'"),
            ),
            (
                b"ceo@example.com <mallory2@example.com>",
                Refused("'@' outside the angle brackets"),
            ),
            (
                b"Mallory <mallory3@example.com> <ceo@example.com>",
                Refused("more than one '<'"),
            ),
            (
                b"Name <a@example.com> trailing",
                Refused("text after the closing '>'"),
            ),
            (b"Name <a@example.com", Refused("do not pair up")),
            (b"Name a@example.com>", Refused("do not pair up")),
            (b"Name >a@example.com<", Refused("do not pair up")),
            (
                b"alice@example.com (Alice)",
                Refused("neither alone nor in angle brackets"),
            ),
            (
                b" alice@example.com",
                Refused("neither alone nor in angle brackets"),
            ),
            // Control, invisible and bidirectional characters, look-alikes.
            (
                b"Alice\0 <alice@example.com>",
                Refused("control character (U+0000)"),
            ),
            (
                b"Alice <alice@example.com>\0",
                Refused("control character (U+0000)"),
            ),
            (
                b"Alice\n<ceo@example.com> <alice@example.com>",
                Refused("control character (U+000A)"),
            ),
            (
                b"Alice\t<alice@example.com>",
                Refused("control character (U+0009)"),
            ),
            (
                "Alice\u{85} <alice@example.com>".as_bytes(),
                Refused("control character (U+0085)"),
            ),
            (
                "Alice \u{202E}moc.elpmaxe@oec\u{202C} <mallory@example.com>".as_bytes(),
                Refused("bidirectional formatting character (U+202E)"),
            ),
            ("\u{202E}alice@example.com".as_bytes(), Refused("(U+202E)")),
            (
                "Alice\u{2066} <alice@example.com>".as_bytes(),
                Refused("(U+2066)"),
            ),
            (
                "Alice\u{200B} <alice@example.com>".as_bytes(),
                Refused("invisible"),
            ),
            (
                "ceo\u{FF20}example.com <mallory@example.com>".as_bytes(),
                Refused("look-alike"),
            ),
            (
                b"Alice \xff <alice@example.com>",
                Refused("not valid UTF-8"),
            ),
            // The name part.
            (b" <alice@example.com>", Refused("must not be empty")),
            (
                b"Alice  <alice@example.com>",
                Refused("must not be empty or begin or end"),
            ),
            (b"Alice<alice@example.com>", Refused("single space")),
            // The address.
            (b"Alice <>", Refused("the address is empty")),
            (b"Alice <alice>", Refused("exactly one '@' (it has 0)")),
            (b"a@b@example.com", Refused("exactly one '@' (it has 2)")),
            (
                b"Alice <a@b@example.com>",
                Refused("exactly one '@' (it has 2)"),
            ),
            (b"Alice <@example.com>", Refused("no local part")),
            (b"Alice <alice@>", Refused("no domain")),
            (
                b"Alice <\"a b\"@example.com>",
                Refused("not allowed ('\"')"),
            ),
            (b"Alice <a b@example.com>", Refused("not allowed (U+0020)")),
            (b"Alice <a(b)@example.com>", Refused("not allowed ('(')")),
            (b"Alice <.alice@example.com>", Refused("'..'")),
            (b"Alice <alice.@example.com>", Refused("'..'")),
            (b"Alice <al..ice@example.com>", Refused("'..'")),
            // Non-ASCII local parts: gpg lower-cases ASCII only and sequoia
            // all of Unicode, so they would be filed under two addresses.
            (
                "Jörg <jörg@example.com>".as_bytes(),
                Refused("non-ASCII character (U+00F6)"),
            ),
            ("JÖRG@example.com".as_bytes(), Refused("non-ASCII")),
            // Unicode domains: sequoia converts them to punycode, gpg not.
            ("Alice <alice@bücher.example>".as_bytes(), Refused("xn--")),
            (b"Alice <alice@localhost>", Refused("not a host name")),
            (b"Alice <alice@example.com.>", Refused("not a host name")),
            (b"Alice <alice@-example.com>", Refused("not a host name")),
            (b"Alice <alice@example-.com>", Refused("not a host name")),
            (b"Alice <alice@exa_mple.com>", Refused("not a host name")),
            (b"Alice <alice@[192.0.2.1]>", Refused("not a host name")),
            (b"Alice <alice@192.0.2.1>", Refused("all digits")),
        ]
    }

    #[test]
    fn canonical_form_table() {
        let long_local = format!("<{}@example.com>", "a".repeat(65));
        let long_label = format!("<a@{}.example>", "b".repeat(64));
        let long_domain = format!("<a@{}com>", "abcdefghi.".repeat(26));
        let mut cases = table();
        cases.push((long_local.as_bytes(), Refused("longer than 64")));
        cases.push((long_label.as_bytes(), Refused("not a host name")));
        cases.push((long_domain.as_bytes(), Refused("longer than 253")));
        for (uid, want) in cases {
            let shown = String::from_utf8_lossy(uid);
            let got = parse_user_id(uid);
            match (want, &got) {
                (Nothing, Ok(None)) => {}
                (Canonical(name, email), Ok(Some(c))) => {
                    assert_eq!(
                        (c.name.as_deref(), c.email.as_str()),
                        (name, email),
                        "{shown:?}"
                    );
                    // Every implementation reads the same address.
                    let u = pgp::packet::UserID::from(uid);
                    assert_eq!(
                        u.email_normalized().ok().flatten().as_deref(),
                        Some(email),
                        "sequoia on {shown:?}"
                    );
                    assert_eq!(
                        gnupg_mailbox(uid).as_deref(),
                        Some(email),
                        "gpg on {shown:?}"
                    );
                    assert_eq!(user_id_readings(&u), vec![email.to_string()], "{shown:?}");
                }
                (Refused(part), Err(why)) => {
                    assert!(why.contains(part), "{shown:?}: {why}");
                    assert!(
                        !why.chars().any(|c| c.is_control()
                            || crate::text::is_invisible_format(c)
                            || looks_like_address_syntax(c)),
                        "{shown:?}: the reason must not carry raw special characters: {why:?}"
                    );
                }
                (_, got) => panic!("{shown:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn readings_cover_what_any_implementation_sees() {
        // Reserving an org key's addresses takes every reading.
        for (uid, want) in [
            (
                "Mallory (<ceo@example.com>) <mallory@example.com>",
                vec!["ceo@example.com", "mallory@example.com"],
            ),
            ("ceo@example.com <m@example.com>", vec!["m@example.com"]),
            ("Org <Org@Example.com>", vec!["org@example.com"]),
        ] {
            let got = user_id_readings(&pgp::packet::UserID::from(uid));
            let mut got: Vec<&str> = got.iter().map(String::as_str).collect();
            got.sort();
            assert_eq!(got, want, "{uid}");
        }
    }

    /// A v4 user key with these user IDs, made a minute ago.
    fn user_key(uids: &[&str]) -> UserKey {
        let mut b = CertBuilder::general_purpose(None::<&str>)
            .set_creation_time(SystemTime::now() - Duration::from_secs(60));
        for u in uids {
            b = b.add_userid(*u);
        }
        let (cert, _) = b.generate().unwrap();
        UserKey {
            cert: cert.strip_secret_key_material(),
        }
    }

    #[test]
    fn certify_refuses_non_canonical_and_reserved_user_ids_and_withdraws_old_certifications() {
        let org = super::faulty_token_tests::org_key();
        let primary = SoftP256::new(1, false);
        let legacy_uid = "Alice (<ceo@example.com>) <alice3@example.com>";
        let user = user_key(&[
            "Alice <alice@example.com>",
            "ceo@example.com <alice2@example.com>",
            "Org <org@example.com>",
            legacy_uid,
            "Alice at home",
        ]);
        // A certification an earlier version made on the non-canonical user ID.
        let uid = pgp::packet::UserID::from(legacy_uid);
        let user_primary = user.cert.primary_key().key().clone();
        let mut signer = SeamSigner::new(&primary, org.primary_key());
        let old = SignatureBuilder::new(SignatureType::GenericCertification)
            .set_signature_creation_time(SystemTime::now() - Duration::from_secs(30))
            .unwrap()
            .set_signature_validity_period(Duration::from_secs(14 * 86_400))
            .unwrap()
            .sign_userid_binding(&mut signer, Some(&user_primary), &uid)
            .unwrap();
        let cert = user
            .cert
            .insert_packets(vec![Packet::from(uid.clone()), old.into()])
            .unwrap()
            .0;
        let user = UserKey { cert };
        let org_fpr = org.fingerprint();
        let now = SystemTime::now();
        assert!(
            user.certification_expiry("alice3@example.com", &org_fpr, now)
                .is_none(),
            "a non-canonical user ID never counts as certified"
        );

        let reserved: HashMap<String, String> = org
            .emails()
            .into_iter()
            .map(|e| (e, "the org key uses this address".to_string()))
            .collect();
        assert!(reserved.contains_key("org@example.com"));
        let select = |_: &str| Ok(());
        let req = CertifyRequest {
            now,
            validity: Duration::from_secs(14 * 86_400),
            select: &select,
            reserved: &reserved,
            org_fingerprints: std::slice::from_ref(&org_fpr),
        };
        let out = certify(&org, &primary, user, &req).unwrap();
        let certified: Vec<&str> = out.certified.iter().map(|c| c.email.as_str()).collect();
        assert_eq!(certified, ["alice@example.com"]);
        // Sequoia keeps user IDs in its own order.
        let mut refused: Vec<(&str, RefusalKind, Option<&str>)> = out
            .refused
            .iter()
            .map(|r| (r.user_id.as_str(), r.kind, r.email.as_deref()))
            .collect();
        refused.sort_by_key(|r| r.2);
        assert_eq!(
            refused,
            [
                (
                    "ceo@example.com <alice2@example.com>",
                    RefusalKind::NonCanonical,
                    Some("alice2@example.com")
                ),
                (
                    legacy_uid,
                    RefusalKind::NonCanonical,
                    Some("alice3@example.com")
                ),
                (
                    "Org <org@example.com>",
                    RefusalKind::Reserved,
                    Some("org@example.com")
                ),
            ]
        );
        for r in &out.refused {
            let want = match r.kind {
                RefusalKind::Reserved => "the org key uses this address",
                _ => "not in canonical form",
            };
            assert!(r.reason.contains(want), "{r:?}");
        }
        // The old certification is gone; only Alice's canonical user ID
        // carries one.
        assert_eq!(out.withdrawn, 1);
        let ours = KeyHandle::from(org_fpr.parse::<Fingerprint>().unwrap());
        for ua in out.key.cert.userids() {
            let n = ua
                .certifications()
                .filter(|s| s.get_issuers().iter().any(|i| i.aliases(&ours)))
                .count();
            let want = usize::from(ua.userid().value() == b"Alice <alice@example.com>");
            assert_eq!(
                n,
                want,
                "{:?}",
                String::from_utf8_lossy(ua.userid().value())
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod faulty_token_tests {
    use super::*;
    use crate::openpgp::{OrgKeyDraft, OrgKeyKeys, PendingSignature, SignMode};
    use crate::signer::testing::SoftP256;
    use pgp::cert::CertBuilder;

    /// An org key made with in-memory signers 1 (primary), 2 (signing), 3 (encryption).
    pub(crate) fn org_key() -> OrgKey {
        let primary = SoftP256::new(1, false);
        let signing = SoftP256::new(2, false);
        let enc = SoftP256::new(3, false);
        OrgKey::generate(
            &OrgKeyDraft {
                user_id: "Org <org@example.com>".into(),
                created: SystemTime::now() - Duration::from_secs(60),
                validity: Some(Duration::from_secs(365 * 86_400)),
            },
            OrgKeyKeys {
                primary: &primary,
                signing: &signing,
                encryption: enc.public_key(),
            },
        )
        .unwrap()
    }

    #[test]
    fn bad_token_signatures_never_leave_as_certifications_or_data_signatures() {
        let org = org_key();
        let (user, _) = CertBuilder::general_purpose(Some("Alice <alice@example.com>"))
            .set_creation_time(SystemTime::now() - Duration::from_secs(60))
            .generate()
            .unwrap();
        let user = UserKey {
            cert: user.strip_secret_key_material(),
        };
        let select = |_: &str| Ok(());
        let req = CertifyRequest {
            now: SystemTime::now(),
            validity: Duration::from_secs(14 * 86_400),
            select: &select,
            reserved: &HashMap::new(),
            org_fingerprints: &[],
        };
        // The good key certifies; a token that flips a bit is caught.
        let good = certify(&org, &SoftP256::new(1, false), user.clone(), &req).unwrap();
        assert_eq!(good.certified.len(), 1);
        let bad = certify(&org, &SoftP256::new(1, true), user, &req).unwrap_err();
        assert!(matches!(bad, PgpError::Signer(_)), "{bad}");

        let mut p =
            PendingSignature::new(&org, &SoftP256::new(2, false), SignMode::Binary).unwrap();
        p.update(b"data");
        assert!(
            p.sign(&org, &SoftP256::new(2, false), SystemTime::now(), true)
                .is_ok()
        );
        let mut p = PendingSignature::new(&org, &SoftP256::new(2, true), SignMode::Binary).unwrap();
        p.update(b"data");
        let e = p
            .sign(&org, &SoftP256::new(2, true), SystemTime::now(), true)
            .unwrap_err();
        assert!(
            matches!(e, PgpError::Signer(crate::signer::SignerError::Failed(ref m)) if m.to_string().contains("does not verify")),
            "{e:?}"
        );
    }
}
