//! Unit tests with an in-memory P-256 signer behind the seam (the token
//! path is covered by the integration tests, with openssl as the judge).

use super::*;
use crate::signer::testing::SoftP256;

fn t(days: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + days * 86_400)
}

fn domains() -> Vec<String> {
    vec!["example.com".into()]
}

#[test]
fn self_signed_org_cert_is_a_ca_for_its_key() {
    let ca = SoftP256::new(1, false);
    let org = self_signed_org_cert(&ca, "CN=Example Org CA,O=Example", t(0), t(365)).unwrap();
    assert!(org.is_ca());
    assert!(org.has_key(ca.public_key()).unwrap());
    assert!(!org.has_key(SoftP256::new(2, false).public_key()).unwrap());
    org.verify_signed_by(&org).unwrap();
    assert_eq!(org.subject(), org.issuer());
    assert_eq!(org.not_after(), t(365));
    assert!(org.emails().is_empty());
    let again = X509Cert::parse(org.pem().unwrap().as_bytes()).unwrap();
    assert_eq!(again.der(), org.der());
    assert!(self_signed_org_cert(&ca, "not a name", t(0), t(1)).is_err());
    assert!(self_signed_org_cert(&ca, "CN=x", t(2), t(1)).is_err());
}

#[test]
fn a_token_that_signs_wrongly_never_yields_a_certificate() {
    let bad = SoftP256::new(1, true);
    match self_signed_org_cert(&bad, "CN=Example Org CA", t(0), t(365)) {
        Err(X509Error::Signer(SignerError::Failed(m))) => {
            assert!(m.to_string().contains("does not verify"), "{m}")
        }
        other => panic!("expected a signer failure, got {other:?}"),
    }
}

#[test]
fn user_certs_are_capped_checked_and_signed_by_the_org_cert() {
    let ca = SoftP256::new(1, false);
    let org = self_signed_org_cert(&ca, "CN=Example Org CA", t(0), t(30)).unwrap();
    let user_key = SoftP256::new(3, false);
    let req = user_request_for_key(
        user_key.public_key(),
        "Alice@Example.com",
        Some("Alice".into()),
    )
    .unwrap();
    assert_eq!(req.emails, ["alice@example.com"]);
    let serial = random_serial();
    let params = IssueParams {
        serial,
        not_before: t(20),
        not_after: t(20 + 14),
        crl_url: Some("http://orgkey.example.com/v1/x509/crl"),
        domains: &domains(),
    };
    let draft = UserCertDraft::new(&org, &ca, &req, &params).unwrap();
    assert_eq!(draft.validity(), (t(20), t(30)), "capped at the org cert");
    assert_eq!(draft.serial(), hex::encode(serial));
    let cert = draft.sign(&ca).unwrap();
    cert.verify_signed_by(&org).unwrap();
    assert!(
        cert.verify_signed_by(&X509Cert::parse(cert.der()).unwrap())
            .is_err()
    );
    assert!(!cert.is_ca());
    assert_eq!(cert.emails(), ["alice@example.com"]);
    assert_eq!(cert.issuer(), org.subject());
    assert_eq!(cert.serial_hex(), hex::encode(serial));

    // Foreign domains and an expiring org cert are refused before signing.
    let foreign = user_request_for_key(user_key.public_key(), "eve@evil.example", None).unwrap();
    assert!(matches!(
        UserCertDraft::new(&org, &ca, &foreign, &params),
        Err(X509Error::Refused(_))
    ));
    let late = IssueParams {
        not_before: t(30),
        not_after: t(44),
        ..params.clone()
    };
    assert!(matches!(
        UserCertDraft::new(&org, &ca, &req, &late),
        Err(X509Error::Refused(_))
    ));
    // A common name that would reorder what a mail client shows (or break
    // a line) never reaches a certificate.
    for cn in ["Alice\u{202e}ecilA", "Alice\nBob", "Al\u{2066}ice"] {
        let spoof =
            user_request_for_key(user_key.public_key(), "alice@example.com", Some(cn.into()))
                .unwrap();
        assert!(
            matches!(
                UserCertDraft::new(&org, &ca, &spoof, &params),
                Err(X509Error::Refused(_))
            ),
            "{cn:?}"
        );
    }
}

#[test]
fn crls_list_revoked_serials_and_verify() {
    let ca = SoftP256::new(1, false);
    let org = self_signed_org_cert(&ca, "CN=Example Org CA", t(0), t(30)).unwrap();
    let entries = vec![RevokedEntry {
        serial: "0a1b2c".into(),
        at: t(2),
        reason: RevocationReason::KeyCompromise,
    }];
    let der_bytes = build_crl(&org, &ca, 7, t(3), t(4), &entries).unwrap();
    let (n, serials) = crl_serials(&der_bytes).unwrap();
    assert_eq!((n, serials), (7, vec!["0a1b2c".to_string()]));
    assert!(
        crl_pem(&der_bytes)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );
    assert!(crl_serials(b"garbage").is_err());
    assert_eq!(
        RevocationReason::parse("superseded").unwrap(),
        RevocationReason::Superseded
    );
    assert!(RevocationReason::parse("because").is_err());
}

#[test]
fn garbage_csrs_are_refused() {
    assert!(matches!(
        parse_user_csr(b"not a csr"),
        Err(X509Error::Invalid(_))
    ));
    assert!(matches!(
        parse_user_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        ),
        Err(X509Error::Invalid(_))
    ));
}

#[test]
fn only_plain_mailboxes_reach_a_certificate_whatever_the_request_path() {
    // The OpenPGP bridge and maintenance renewals build requests without a
    // CSR: the draft refuses what a CSR could not carry either.
    let ca = SoftP256::new(1, false);
    let org = self_signed_org_cert(&ca, "CN=Example Org CA", t(0), t(30)).unwrap();
    let user_key = SoftP256::new(3, false);
    let params = IssueParams {
        serial: random_serial(),
        not_before: t(1),
        not_after: t(15),
        crl_url: None,
        domains: &domains(),
    };
    for bad in [
        "victim@bank.com@example.com",
        "a\0b@example.com",
        "eve\nforged@example.com",
        "eve\t@example.com",
        "\"a b\"@example.com",
        "a,b@example.com",
    ] {
        let req = user_request_for_key(user_key.public_key(), bad, None).unwrap();
        match UserCertDraft::new(&org, &ca, &req, &params) {
            Err(X509Error::Refused(m)) => assert!(m.contains("not a valid email"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let mut none = user_request_for_key(user_key.public_key(), "a@example.com", None).unwrap();
    none.emails.clear();
    assert!(matches!(
        UserCertDraft::new(&org, &ca, &none, &params),
        Err(X509Error::Refused(_))
    ));
    // A good one passes the profile check, which re-reads every address.
    let good = user_request_for_key(user_key.public_key(), "a.b+c@example.com", None).unwrap();
    let cert = UserCertDraft::new(&org, &ca, &good, &params)
        .unwrap()
        .sign(&ca)
        .unwrap();
    assert_eq!(cert.emails(), ["a.b+c@example.com"]);
}
