//! X.509: the only code that uses x509-cert/der/spki (and the RustCrypto
//! verifiers). It builds the org cert (self-signed CA or a PKCS#10 request
//! for an external CA) with the key in the token, checks certificates the
//! operator imports, parses and verifies user CSRs, drafts S/MIME user
//! certificates whose to-be-signed bytes the caller records before the token
//! signs them, and builds CRLs. It also reads the names of API clients' TLS
//! certificates in canonical form (`names`). Every token signature is
//! verified in software before it is used. No x509-cert type leaves this
//! module.

mod keyfile;
mod keys;
mod mailbox;
mod names;
mod profiles;

pub use keyfile::{CaKeypairFile, read_ca_keypair};
pub use mailbox::check_mailbox;
pub use names::{canonical_dn, certificate_dns};

use crate::signer::{PublicKey, Signer, SignerError};
use der::asn1::Ia5String;
use der::referenced::OwnedToRef;
use der::{Decode, DecodePem, Encode, EncodePem};
use keys::{CaKey, UserKeyKind, parse_spki, spki_der, spki_of};
use profiles::{OrgCaProfile, UserCertProfile};
use sha2_11::Digest;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_cert::builder::{Builder, CertificateBuilder, RequestBuilder};
use x509_cert::certificate::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// X.509 errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// Input that is not what it should be (not a CSR, bad signature...).
    #[error("{0}")]
    Invalid(String),
    /// Well-formed input that policy refuses (weak key, foreign domain...).
    #[error("{0}")]
    Refused(String),
    /// The token failed to sign (or signed wrongly).
    #[error(transparent)]
    Signer(SignerError),
    /// DER/PEM encoding trouble.
    #[error("encoding: {0}")]
    Encoding(String),
}

fn enc(what: &'static str) -> impl FnOnce(der::Error) -> X509Error {
    move |e| X509Error::Encoding(format!("{what}: {e}"))
}

fn builder_err(what: &'static str) -> impl FnOnce(x509_cert::builder::Error) -> X509Error {
    move |e| X509Error::Encoding(format!("{what}: {e}"))
}

fn to_time(t: SystemTime) -> Result<Time, X509Error> {
    // Whole seconds: X.509 times have no fractions.
    let secs = crate::clock::unix_secs(t);
    Time::try_from(UNIX_EPOCH + Duration::from_secs(secs)).map_err(enc("a validity time"))
}

/// Reads PEM (any label matching `T`) or DER.
fn pem_or_der<T>(bytes: &[u8], what: &str) -> Result<T, X509Error>
where
    T: for<'a> Decode<'a> + DecodePem,
{
    let trimmed = bytes.trim_ascii_start();
    let parsed = if trimmed.starts_with(b"-----BEGIN") {
        T::from_pem(trimmed).map_err(|e| e.to_string())
    } else {
        T::from_der(bytes).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| X509Error::Invalid(format!("not a {what} (PEM or DER): {e}")))
}

fn parse_name(subject: &str) -> Result<Name, X509Error> {
    let name = Name::from_str(subject).map_err(|e| {
        X509Error::Invalid(format!(
            "subject {subject:?} is not an RFC 4514 name such as \"CN=Example Org CA,O=Example\": {e}"
        ))
    })?;
    if name.is_empty() {
        return Err(X509Error::Invalid("the subject must not be empty".into()));
    }
    Ok(name)
}

/// A random positive 128-bit serial number (16 bytes, top bit clear,
/// first byte non-zero so the encoding keeps all 16 bytes).
pub fn random_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f).max(1);
    s
}

/// An X.509 certificate: the org cert, a chain member or an issued user cert.
#[derive(Clone)]
pub struct X509Cert {
    cert: Certificate,
    der: Vec<u8>,
}

impl std::fmt::Debug for X509Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Cert")
            .field("subject", &self.subject())
            .field("serial", &self.serial_hex())
            .finish()
    }
}

impl X509Cert {
    fn from_cert(cert: Certificate) -> Result<X509Cert, X509Error> {
        let der = cert.to_der().map_err(enc("encoding a certificate"))?;
        Ok(X509Cert { cert, der })
    }

    /// Parses one PEM or DER certificate.
    pub fn parse(bytes: &[u8]) -> Result<X509Cert, X509Error> {
        Self::from_cert(pem_or_der::<Certificate>(bytes, "certificate")?)
    }

    /// Parses every certificate of a PEM bundle (or one DER certificate).
    pub fn parse_chain(bytes: &[u8]) -> Result<Vec<X509Cert>, X509Error> {
        if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Ok(vec![Self::parse(bytes)?]);
        }
        let certs = Certificate::load_pem_chain(bytes)
            .map_err(|e| X509Error::Invalid(format!("not a PEM certificate chain: {e}")))?;
        certs.into_iter().map(Self::from_cert).collect()
    }

    /// DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM text.
    pub fn pem(&self) -> Result<String, X509Error> {
        self.cert
            .to_pem(der::pem::LineEnding::LF)
            .map_err(enc("encoding PEM"))
    }

    /// Upper-case hex SHA-256 of the DER encoding.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(sha2_11::Sha256::digest(&self.der))
    }

    /// Subject as an RFC 4514 string.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// Issuer as an RFC 4514 string.
    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate().issuer().to_string()
    }

    /// Lower-case hex serial number.
    pub fn serial_hex(&self) -> String {
        hex::encode(self.cert.tbs_certificate().serial_number().as_bytes())
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.cert
            .tbs_certificate()
            .validity()
            .not_before
            .to_system_time()
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.cert
            .tbs_certificate()
            .validity()
            .not_after
            .to_system_time()
    }

    /// Email addresses: subject emailAddress and SAN rfc822Name, lower-case.
    pub fn emails(&self) -> Vec<String> {
        let tbs = self.cert.tbs_certificate();
        let mut out = Vec::new();
        if let Ok(Some(e)) = tbs.subject().email_address() {
            out.push(e.as_str().to_lowercase());
        }
        if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
            for n in san.0 {
                if let GeneralName::Rfc822Name(e) = n {
                    let e = e.as_str().to_lowercase();
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    /// A CA certificate: basicConstraints cA and keyUsage keyCertSign.
    pub fn is_ca(&self) -> bool {
        let tbs = self.cert.tbs_certificate();
        let ca = matches!(tbs.get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca);
        let sign = matches!(tbs.get_extension::<KeyUsage>(), Ok(Some((_, ku))) if ku.0.contains(KeyUsages::KeyCertSign));
        ca && sign
    }

    /// Whether the certificate is for `pk`.
    pub fn has_key(&self, pk: &PublicKey) -> Result<bool, X509Error> {
        Ok(self.spki_der()? == spki_der(&spki_of(pk)?)?)
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Result<Vec<u8>, X509Error> {
        spki_der(self.cert.tbs_certificate().subject_public_key_info())
    }

    /// Checks that `issuer`'s key signed this certificate.
    pub fn verify_signed_by(&self, issuer: &X509Cert) -> Result<(), X509Error> {
        let tbs = self
            .cert
            .tbs_certificate()
            .to_der()
            .map_err(enc("encoding the TBS certificate"))?;
        keys::verify(
            issuer
                .cert
                .tbs_certificate()
                .subject_public_key_info()
                .owned_to_ref(),
            self.cert.signature_algorithm(),
            &tbs,
            self.cert.signature().raw_bytes(),
        )
    }

    /// Proves that `signer` holds this certificate's private key: it signs
    /// a random challenge, which is verified against the certificate's key.
    pub fn prove_key(&self, signer: &dyn Signer) -> Result<(), X509Error> {
        if !self.has_key(signer.public_key())? {
            return Err(X509Error::Invalid(
                "the token key is not the certificate's key".into(),
            ));
        }
        let challenge: [u8; 32] = rand::random();
        // `sign` verifies the signature against the key before returning.
        CaKey::new(signer)?.sign(&challenge).map(|_| ())
    }

    fn subject_name(&self) -> &Name {
        self.cert.tbs_certificate().subject()
    }
}

/// Makes a self-signed org cert (CA, pathlen 0, keyCertSign + cRLSign, SKI)
/// with the key behind `signer`.
pub fn self_signed_org_cert(
    signer: &dyn Signer,
    subject: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<X509Cert, X509Error> {
    let name = parse_name(subject)?;
    if not_after <= not_before {
        return Err(X509Error::Invalid(
            "the org cert would expire before it starts".into(),
        ));
    }
    let ca = CaKey::new(signer)?;
    let serial = SerialNumber::new(&random_serial()).map_err(enc("serial number"))?;
    let mut builder = CertificateBuilder::new(
        OrgCaProfile { subject: name },
        serial,
        Validity::new(to_time(not_before)?, to_time(not_after)?),
        ca.spki().clone(),
    )
    .map_err(builder_err("preparing the org cert"))?;
    let tbs = builder
        .finalize(&ca)
        .map_err(builder_err("preparing the org cert"))?;
    let sig = ca.sign(&tbs)?;
    let cert = builder
        .assemble(sig, &ca)
        .map_err(builder_err("assembling the org cert"))?;
    X509Cert::from_cert(cert)
}

/// A PKCS#10 request for the org cert key, PEM, signed in the token.
pub fn org_cert_request(signer: &dyn Signer, subject: &str) -> Result<String, X509Error> {
    let name = parse_name(subject)?;
    let ca = CaKey::new(signer)?;
    let mut builder = RequestBuilder::new(name).map_err(builder_err("preparing the CSR"))?;
    builder
        .add_extension(&BasicConstraints {
            ca: true,
            path_len_constraint: Some(0),
        })
        .map_err(enc("preparing the CSR"))?;
    builder
        .add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))
        .map_err(enc("preparing the CSR"))?;
    let info = builder
        .finalize(&ca)
        .map_err(builder_err("preparing the CSR"))?;
    let sig = ca.sign(&info)?;
    let req = builder
        .assemble(sig, &ca)
        .map_err(builder_err("assembling the CSR"))?;
    req.to_pem(der::pem::LineEnding::LF)
        .map_err(enc("encoding the CSR"))
}

/// What a user certificate is for: from a CSR or from a known OpenPGP key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCertRequest {
    /// Email addresses (lower-case), the first is the primary.
    pub emails: Vec<String>,
    /// Common name, only from validated data (never copied from a CSR).
    pub common_name: Option<String>,
    /// The key, DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// Key description ("ECDSA P-256", "RSA 3072", ...).
    pub key: String,
}

impl UserCertRequest {
    /// Hex SHA-256 of the public key (to find certificates for the same key).
    pub fn key_id(&self) -> String {
        hex::encode(sha2_11::Sha256::digest(&self.spki))
    }
}

const MAX_EMAILS: usize = 16;

/// Parses a PEM or DER PKCS#10 CSR, checks its signature (proof of
/// possession) and the key policy, and collects its email addresses
/// (subject emailAddress and the SAN rfc822Names of its extension request).
pub fn parse_user_csr(bytes: &[u8]) -> Result<UserCertRequest, X509Error> {
    let req: CertReq = pem_or_der(bytes, "PKCS#10 certificate request")?;
    let info_der = req.info.to_der().map_err(enc("encoding the request"))?;
    let kind = UserKeyKind::of(req.info.public_key.owned_to_ref())?;
    keys::verify(
        req.info.public_key.owned_to_ref(),
        &req.algorithm,
        &info_der,
        req.signature.raw_bytes(),
    )
    .map_err(|e| X509Error::Invalid(format!("the CSR's own signature is bad: {e}")))?;
    let mut emails: Vec<String> = Vec::new();
    // Strict: an address is taken as it is (no trimming) or refused.
    let mut add = |e: &str| -> Result<(), X509Error> {
        check_mailbox(e).map_err(|m| X509Error::Invalid(format!("in the CSR: {m}")))?;
        let e = e.to_ascii_lowercase();
        if !emails.contains(&e) {
            emails.push(e);
        }
        Ok(())
    };
    match req.info.subject.email_address() {
        Ok(Some(e)) => add(e.as_str())?,
        Ok(None) => {}
        Err(e) => {
            return Err(X509Error::Invalid(format!(
                "the CSR's subject emailAddress is not an IA5String: {e}"
            )));
        }
    }
    for attr in req.info.attributes.iter() {
        if attr.oid != profiles::EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let exts: x509_cert::ext::Extensions = value
                .decode_as()
                .map_err(|e| X509Error::Invalid(format!("bad extension request: {e}")))?;
            for ext in exts {
                if ext.extn_id == profiles::SUBJECT_ALT_NAME {
                    let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| X509Error::Invalid(format!("bad subjectAltName: {e}")))?;
                    for n in san.0 {
                        if let GeneralName::Rfc822Name(e) = n {
                            add(e.as_str())?;
                        }
                    }
                }
            }
        }
    }
    if emails.is_empty() {
        return Err(X509Error::Refused(
            "the CSR names no email address (subject emailAddress or subjectAltName rfc822Name)"
                .into(),
        ));
    }
    if emails.len() > MAX_EMAILS {
        return Err(X509Error::Refused(format!(
            "the CSR names {} email addresses; at most {MAX_EMAILS}",
            emails.len()
        )));
    }
    // The CSR's subject is not copied: nobody validated the name in it (a
    // CSR for alice@ could ask for "CN=Mallory The CEO"). The caller may set
    // a name it validated, such as a certified OpenPGP user ID's.
    Ok(UserCertRequest {
        emails,
        common_name: None,
        spki: spki_der(&req.info.public_key)?,
        key: kind.describe(),
    })
}

/// A request for an OpenPGP key's material (the bridge): RSA or a NIST
/// curve, with the user's email.
pub fn user_request_for_key(
    pk: &PublicKey,
    email: &str,
    common_name: Option<String>,
) -> Result<UserCertRequest, X509Error> {
    let spki = spki_of(pk)?;
    let kind = UserKeyKind::of(spki.owned_to_ref())?;
    Ok(UserCertRequest {
        emails: vec![email.to_lowercase()],
        common_name,
        spki: spki_der(&spki)?,
        key: kind.describe(),
    })
}

/// A user certificate whose to-be-signed bytes exist but which is not
/// signed yet. The caller records [`UserCertDraft::tbs`] before signing.
pub struct UserCertDraft {
    builder: CertificateBuilder<UserCertProfile>,
    tbs: Vec<u8>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for UserCertDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCertDraft")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Settings of an issuance.
#[derive(Debug, Clone)]
pub struct IssueParams<'a> {
    /// Serial number (from [`random_serial`], unique in the store).
    pub serial: [u8; 16],
    /// Start of validity.
    pub not_before: SystemTime,
    /// Requested end of validity (capped at the org cert's).
    pub not_after: SystemTime,
    /// CRL distribution point URL, if any.
    pub crl_url: Option<&'a str>,
    /// Managed domains every email must belong to.
    pub domains: &'a [String],
}

impl UserCertDraft {
    /// Builds the to-be-signed certificate and runs the profile check on it.
    pub fn new(
        org: &X509Cert,
        org_signer: &dyn Signer,
        req: &UserCertRequest,
        p: &IssueParams<'_>,
    ) -> Result<UserCertDraft, X509Error> {
        if req.emails.is_empty() {
            return Err(X509Error::Refused("no email address to certify".into()));
        }
        for e in &req.emails {
            check_mailbox(e).map_err(X509Error::Refused)?;
            if crate::config::managed_domain_of(p.domains, e).is_none() {
                return Err(X509Error::Refused(format!(
                    "{e} is not in a managed domain"
                )));
            }
        }
        let not_after = p.not_after.min(org.not_after());
        let not_before = p.not_before.max(org.not_before());
        if not_after <= not_before + Duration::from_secs(3600) {
            return Err(X509Error::Refused(
                "the org cert expires too soon to issue under it; replace it".into(),
            ));
        }
        let ca = CaKey::new(org_signer)?;
        let spki = parse_spki(&req.spki)?;
        let kind = UserKeyKind::of(spki.owned_to_ref())?;
        let profile = UserCertProfile::new(org, req, kind, p.crl_url)?;
        let mut builder = CertificateBuilder::new(
            profile,
            SerialNumber::new(&p.serial).map_err(enc("serial number"))?,
            Validity::new(to_time(not_before)?, to_time(not_after)?),
            spki,
        )
        .map_err(builder_err("preparing the user certificate"))?;
        let tbs = builder
            .finalize(&ca)
            .map_err(builder_err("preparing the user certificate"))?;
        profiles::check_user_tbs(&tbs, org, p.domains)?;
        Ok(UserCertDraft {
            builder,
            tbs,
            serial: hex::encode(p.serial),
            not_before: UNIX_EPOCH + Duration::from_secs(crate::clock::unix_secs(not_before)),
            not_after: UNIX_EPOCH + Duration::from_secs(crate::clock::unix_secs(not_after)),
        })
    }

    /// The DER to-be-signed certificate.
    pub fn tbs(&self) -> &[u8] {
        &self.tbs
    }

    /// Lower-case hex serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Validity.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        (self.not_before, self.not_after)
    }

    /// Signs in the token, verifies the signature against the org cert key,
    /// and assembles the certificate.
    pub fn sign(self, org_signer: &dyn Signer) -> Result<X509Cert, X509Error> {
        let ca = CaKey::new(org_signer)?;
        let sig = ca.sign(&self.tbs)?;
        let cert = self
            .builder
            .assemble(sig, &ca)
            .map_err(builder_err("assembling the user certificate"))?;
        X509Cert::from_cert(cert)
    }
}

/// Why a certificate was revoked (RFC 5280 CRLReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    /// unspecified
    Unspecified,
    /// keyCompromise
    KeyCompromise,
    /// affiliationChanged
    AffiliationChanged,
    /// superseded
    Superseded,
    /// cessationOfOperation
    CessationOfOperation,
    /// privilegeWithdrawn
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, by its RFC 5280 name.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// RFC 5280 name.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// Parses an RFC 5280 name.
    pub fn parse(s: &str) -> Result<RevocationReason, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown reason {s:?} (one of: {})",
                    Self::ALL.map(|r| r.name()).join(", ")
                )
            })
    }
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Lower-case hex serial.
    pub serial: String,
    /// When it was revoked.
    pub at: SystemTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Builds and signs a CRL for `org` (DER).
pub fn build_crl(
    org: &X509Cert,
    org_signer: &dyn Signer,
    number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>, X509Error> {
    let ca = CaKey::new(org_signer)?;
    profiles::crl(
        org,
        &ca,
        number,
        to_time(this_update)?,
        to_time(next_update)?,
        revoked,
    )
}

/// Parses a DER CRL and returns its number and the serials it lists (tests
/// and the status route).
pub fn crl_serials(der_bytes: &[u8]) -> Result<(u64, Vec<String>), X509Error> {
    profiles::crl_serials(der_bytes)
}

/// PEM armor for a DER CRL.
pub fn crl_pem(der_bytes: &[u8]) -> Result<String, X509Error> {
    der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, der_bytes)
        .map_err(|e| X509Error::Encoding(format!("encoding the CRL: {e}")))
}

fn ia5(s: &str) -> Result<Ia5String, X509Error> {
    Ia5String::new(s).map_err(|_| X509Error::Invalid(format!("{s:?} is not ASCII")))
}

#[cfg(test)]
mod tests;
