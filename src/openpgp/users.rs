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
    /// The user ID text.
    pub user_id: String,
    /// Normalized (lower-case, punycode domain) email address, if it has one.
    pub email: Option<String>,
    /// Why it cannot be certified, if it cannot (revoked, no valid
    /// self-signature).
    pub problem: Option<String>,
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

/// A user ID that was not certified, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The user ID text.
    pub user_id: String,
    /// Why.
    pub reason: String,
}

/// What [`certify`] did.
#[derive(Debug, Clone)]
pub struct CertifyOutcome {
    /// The key with its new certifications (pruned).
    pub key: UserKey,
    /// User IDs certified now.
    pub certified: Vec<Certification>,
    /// User IDs with an email that were not certified.
    pub refused: Vec<Refusal>,
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
                let email = uid.email_normalized().ok().flatten();
                let valid = vc
                    .as_ref()
                    .is_some_and(|vc| vc.userids().any(|v| v.userid() == uid));
                let problem = if revoked(uid) {
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
            .filter(|ua| ua.userid().email_normalized().ok().flatten().as_deref() == Some(email))
            .flat_map(|ua| ua.certifications())
            .filter(|s| issuer_index(s, &ours).is_some() && alive(s, now))
            .max_by_key(|s| s.signature_creation_time())
            .and_then(|s| s.signature_expiration_time())
    }

    /// Removes org certifications that are expired at `now` or superseded by
    /// a newer one from the same org key on the same user ID. Everything
    /// else (self-signatures, other people's certifications) stays.
    pub fn prune(self, org_fingerprints: &[String], now: SystemTime) -> Result<UserKey, PgpError> {
        let ours = parse_fingerprints(org_fingerprints);
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
        Ok(UserKey { cert })
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
    let mut new_packets: Vec<Packet> = Vec::new();
    let infos = user.user_ids(req.now);
    for (ua, info) in user.cert.userids().zip(infos) {
        let Some(email) = info.email.clone() else {
            continue;
        };
        if let Err(reason) = (req.select)(&email) {
            refused.push(Refusal {
                user_id: info.user_id,
                reason,
            });
            continue;
        }
        if let Some(reason) = info.problem {
            refused.push(Refusal {
                user_id: info.user_id,
                reason,
            });
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
    let key = UserKey { cert }.prune(req.org_fingerprints, req.now)?;
    Ok(CertifyOutcome {
        key,
        certified,
        refused,
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
mod faulty_token_tests {
    use super::*;
    use crate::openpgp::{OrgKeyDraft, OrgKeyKeys, PendingSignature, SignMode};
    use crate::signer::testing::SoftP256;
    use pgp::cert::CertBuilder;

    fn org_key() -> OrgKey {
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
