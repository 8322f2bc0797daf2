//! Certificate profiles: the org CA (self-signed, pathlen 0) and S/MIME
//! user certificates, the check every user certificate passes before it is
//! signed, and CRLs.

use super::keys::{CaKey, UserKeyKind};
use super::mailbox::check_mailbox;
use super::{X509Cert, X509Error, enc, ia5};
use der::asn1::{ObjectIdentifier, Utf8StringRef};
use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoRef;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::certificate::TbsCertificate;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CrlDistributionPoints, CrlNumber, CrlReason,
    ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

pub(super) const EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
pub(super) const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_KP_EMAIL_PROTECTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
const ID_AT_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const ID_EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

type BuildResult<T> = x509_cert::builder::Result<T>;

/// The org CA: basicConstraints CA pathlen 0, keyCertSign + cRLSign, SKI
/// (and AKI = SKI, as a self-signed root).
pub(super) struct OrgCaProfile {
    pub(super) subject: Name,
}

impl BuilderProfile for OrgCaProfile {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    // Pushed one by one: each `to_extension` sees the extensions before it.
    #[allow(clippy::vec_init_then_push)]
    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> BuildResult<Vec<Extension>> {
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        let mut exts: Vec<Extension> = Vec::new();
        exts.push(
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            }
            .to_extension(tbs.subject(), &exts)?,
        );
        exts.push(
            KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
                .to_extension(tbs.subject(), &exts)?,
        );
        exts.push(
            AuthorityKeyIdentifier {
                key_identifier: Some(ski.0.clone()),
                ..Default::default()
            }
            .to_extension(tbs.subject(), &exts)?,
        );
        exts.push(ski.to_extension(tbs.subject(), &exts)?);
        Ok(exts)
    }
}

/// An S/MIME user certificate.
pub(super) struct UserCertProfile {
    subject: Name,
    issuer: Name,
    issuer_ski: Option<SubjectKeyIdentifier>,
    emails: Vec<String>,
    kind: UserKeyKind,
    crl_url: Option<String>,
}

impl UserCertProfile {
    pub(super) fn new(
        org: &X509Cert,
        req: &super::UserCertRequest,
        kind: UserKeyKind,
        crl_url: Option<&str>,
    ) -> Result<UserCertProfile, X509Error> {
        let mut rdns = RdnSequence::default();
        let mut push = |oid: ObjectIdentifier, value: der::Any| -> Result<(), X509Error> {
            let mut rdn = RelativeDistinguishedName::default();
            rdn.insert(AttributeTypeAndValue { oid, value })
                .map_err(enc("building the subject"))?;
            rdns.push(rdn);
            Ok(())
        };
        if let Some(cn) = &req.common_name {
            if cn.is_empty() || cn.len() > 64 || cn.chars().any(crate::text::is_hidden) {
                return Err(X509Error::Refused(
                    "the common name must be 1-64 printable characters, without control or \
                     invisible formatting (bidi) characters"
                        .into(),
                ));
            }
            let v = Utf8StringRef::new(cn).map_err(enc("common name"))?;
            push(
                ID_AT_COMMON_NAME,
                der::Any::encode_from(&v).map_err(enc("common name"))?,
            )?;
        }
        let email = ia5(&req.emails[0])?;
        push(
            ID_EMAIL_ADDRESS,
            der::Any::encode_from(&email).map_err(enc("email"))?,
        )?;
        let issuer_ski = org
            .cert
            .tbs_certificate()
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, s)| s);
        Ok(UserCertProfile {
            subject: Name::hazmat_from_rdn_sequence(rdns),
            issuer: org.subject_name().clone(),
            issuer_ski,
            emails: req.emails.clone(),
            kind,
            crl_url: crl_url.map(str::to_string),
        })
    }
}

impl BuilderProfile for UserCertProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> BuildResult<Vec<Extension>> {
        let subject = tbs.subject();
        let mut exts: Vec<Extension> = Vec::new();
        exts.push(
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(subject, &exts)?,
        );
        let usage = match self.kind {
            UserKeyKind::Rsa(_) => KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment,
            UserKeyKind::P256 | UserKeyKind::P384 => {
                KeyUsages::DigitalSignature | KeyUsages::KeyAgreement
            }
            UserKeyKind::Ed25519 => KeyUsages::DigitalSignature.into(),
        };
        exts.push(KeyUsage(usage).to_extension(subject, &exts)?);
        exts.push(ExtendedKeyUsage(vec![ID_KP_EMAIL_PROTECTION]).to_extension(subject, &exts)?);
        let mut names = Vec::new();
        for e in &self.emails {
            names.push(GeneralName::Rfc822Name(
                der::asn1::Ia5String::new(e).map_err(x509_cert::builder::Error::from)?,
            ));
        }
        exts.push(SubjectAltName(names).to_extension(subject, &exts)?);
        exts.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(subject, &exts)?);
        let issuer_ski = match &self.issuer_ski {
            Some(s) => s.clone(),
            None => SubjectKeyIdentifier::try_from(issuer_spk)?,
        };
        exts.push(
            AuthorityKeyIdentifier {
                key_identifier: Some(issuer_ski.0),
                ..Default::default()
            }
            .to_extension(subject, &exts)?,
        );
        if let Some(url) = &self.crl_url {
            let uri = der::asn1::Ia5String::new(url).map_err(x509_cert::builder::Error::from)?;
            exts.push(
                CrlDistributionPoints(vec![DistributionPoint {
                    distribution_point: Some(DistributionPointName::FullName(vec![
                        GeneralName::UniformResourceIdentifier(uri),
                    ])),
                    reasons: None,
                    crl_issuer: None,
                }])
                .to_extension(subject, &exts)?,
            );
        }
        Ok(exts)
    }
}

/// The profile check before signing: validity inside the org cert's, EKU
/// emailProtection, not a CA, every email (subject emailAddress and SAN) a
/// plain mailbox in a managed domain.
pub(super) fn check_user_tbs(
    tbs_der: &[u8],
    org: &X509Cert,
    domains: &[String],
) -> Result<(), X509Error> {
    let tbs = TbsCertificate::from_der(tbs_der).map_err(enc("re-reading the TBS certificate"))?;
    let fail = |m: &str| Err(X509Error::Refused(format!("profile check failed: {m}")));
    let v = tbs.validity();
    if v.not_before.to_system_time() < org.not_before()
        || v.not_after.to_system_time() > org.not_after()
    {
        return fail("validity outside the org cert's");
    }
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if !bc.ca => {}
        _ => return fail("not marked as an end-entity certificate"),
    }
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, eku))) if eku.0.contains(&ID_KP_EMAIL_PROTECTION) => {}
        _ => return fail("no emailProtection extended key usage"),
    }
    let san = match tbs.get_extension::<SubjectAltName>() {
        Ok(Some((_, san))) => san,
        _ => return fail("no subjectAltName"),
    };
    let managed_mailbox = |e: &str| {
        check_mailbox(e).is_ok() && crate::config::managed_domain_of(domains, e).is_some()
    };
    let mut any = false;
    for n in san.0 {
        match n {
            GeneralName::Rfc822Name(e) if managed_mailbox(e.as_str()) => any = true,
            _ => return fail("a subjectAltName that is not a mailbox in a managed domain"),
        }
    }
    if !any {
        return fail("no email address");
    }
    match tbs.subject().email_address() {
        Ok(Some(e)) if managed_mailbox(e.as_str()) => {}
        Ok(None) => {}
        _ => return fail("a subject emailAddress that is not a mailbox in a managed domain"),
    }
    Ok(())
}

fn reason_code(r: super::RevocationReason) -> CrlReason {
    use super::RevocationReason as R;
    match r {
        R::Unspecified => CrlReason::Unspecified,
        R::KeyCompromise => CrlReason::KeyCompromise,
        R::AffiliationChanged => CrlReason::AffiliationChanged,
        R::Superseded => CrlReason::Superseded,
        R::CessationOfOperation => CrlReason::CessationOfOperation,
        R::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
    }
}

/// Builds the CRL by hand (x509-cert's CrlBuilder copies the issuer's own
/// AKI, which names the external CA's key for a CA-issued org cert).
pub(super) fn crl(
    org: &X509Cert,
    ca: &CaKey<'_>,
    number: u64,
    this_update: Time,
    next_update: Time,
    revoked: &[super::RevokedEntry],
) -> Result<Vec<u8>, X509Error> {
    use spki::DynSignatureAlgorithmIdentifier;
    let issuer = org.subject_name().clone();
    let ski = match org
        .cert
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
    {
        Ok(Some((_, s))) => s,
        _ => SubjectKeyIdentifier::try_from(ca.spki().owned_to_ref())
            .map_err(|e| X509Error::Encoding(format!("key identifier: {e}")))?,
    };
    let mut exts: Vec<Extension> = Vec::new();
    let number_der = der::asn1::Uint::new(&number.to_be_bytes()).map_err(enc("CRL number"))?;
    exts.push(
        CrlNumber(number_der)
            .to_extension(&issuer, &exts)
            .map_err(enc("CRL number"))?,
    );
    exts.push(
        AuthorityKeyIdentifier {
            key_identifier: Some(ski.0),
            ..Default::default()
        }
        .to_extension(&issuer, &exts)
        .map_err(enc("CRL key identifier"))?,
    );
    let mut entries: Vec<RevokedCert> = Vec::with_capacity(revoked.len());
    for r in revoked {
        let serial_bytes = hex::decode(&r.serial)
            .map_err(|_| X509Error::Invalid(format!("serial {:?} is not hex", r.serial)))?;
        let reason = reason_code(r.reason)
            .to_extension(&issuer, &[])
            .map_err(enc("revocation reason"))?;
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(&serial_bytes).map_err(enc("serial"))?,
            revocation_date: super::to_time(r.at)?,
            crl_entry_extensions: Some(vec![reason]),
        });
    }
    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: ca
            .signature_algorithm_identifier()
            .map_err(|e| X509Error::Encoding(format!("algorithm: {e}")))?,
        issuer,
        this_update,
        next_update: Some(next_update),
        revoked_certificates: if entries.is_empty() {
            None
        } else {
            Some(entries)
        },
        crl_extensions: Some(exts),
    };
    let tbs_der = tbs.to_der().map_err(enc("encoding the CRL"))?;
    let signature = ca.sign(&tbs_der)?;
    let crl = CertificateList {
        signature_algorithm: tbs.signature.clone(),
        tbs_cert_list: tbs,
        signature,
    };
    crl.to_der().map_err(enc("encoding the CRL"))
}

pub(super) fn crl_serials(der_bytes: &[u8]) -> Result<(u64, Vec<String>), X509Error> {
    let crl: CertificateList = CertificateList::from_der(der_bytes)
        .map_err(|e| X509Error::Invalid(format!("not a DER CRL: {e}")))?;
    let mut number = 0u64;
    for ext in crl.tbs_cert_list.crl_extensions.iter().flatten() {
        if ext.extn_id == ObjectIdentifier::new_unwrap("2.5.29.20") {
            let n =
                der::asn1::Uint::from_der(ext.extn_value.as_bytes()).map_err(enc("CRL number"))?;
            for b in n.as_bytes() {
                number = (number << 8) | u64::from(*b);
            }
        }
    }
    let serials = crl
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|r| hex::encode(r.serial_number.as_bytes()))
        .collect();
    Ok((number, serials))
}
