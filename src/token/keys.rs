//! Org key pairs in the token: generation templates, public key read-back,
//! destruction, and the [`TokenSigner`] that implements the signing seam.
//!
//! Templates follow one rule: a private key gets exactly the usage its role
//! needs (SIGN for certify/sign keys, DERIVE or DECRYPT for the encryption
//! key), is CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE, cannot be modified
//! afterwards, and is extractable only together with CKA_WRAP_WITH_TRUSTED
//! (so not at all on a token whose HSM profile says it refuses that
//! attribute, `[keys] wrap_with_trusted = false`).
//!
//! PKCS#11 carries two EC attributes as DER: CKA_EC_PARAMS (the curve's
//! OID, or a PrintableString naming it) and CKA_EC_POINT (an OCTET STRING
//! around the point). They are encoded and decoded here with the `der`
//! crate, the one use of it outside `x509/`: these are attribute values of
//! the PKCS#11 interface, not certificates, so they stay in the token layer.

use super::error::CkResultExt;
use super::{Token, TokenError};
use crate::config::profile::Ed25519Params;
use crate::signer::{DigestAlgorithm, EcCurve, ImportedKey, PublicKey, Signer, SignerError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::asn1::{ObjectIdentifier, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode};
use std::sync::Arc;

// `new_unwrap` runs at compile time: a malformed OID fails the build.
/// prime256v1 (secp256r1), RFC 5480
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1, RFC 5480
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-Ed25519, RFC 8410
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// The curve name PKCS#11 3.0 allows instead of the OID (as a PrintableString).
const NAME_ED25519: &str = "edwards25519";

/// Key pair types the token generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA / ECDH on a NIST curve
    Ec(EcCurve),
    /// EdDSA Ed25519
    Ed25519,
    /// RSA with this modulus size
    Rsa(u32),
}

/// What a key is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// CKA_SIGN only
    Sign,
    /// CKA_DERIVE only (ECDH)
    Derive,
    /// CKA_DECRYPT only (RSA)
    Decrypt,
}

/// A key pair to generate.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Algorithm and size.
    pub kind: KeyKind,
    /// The one usage the private key gets.
    pub usage: KeyUsage,
    /// CKA_LABEL for both halves.
    pub label: String,
    /// CKA_EXTRACTABLE (always with CKA_WRAP_WITH_TRUSTED) or not at all.
    pub exportable: bool,
}

/// A key pair in the token: its CKA_ID and public key.
#[derive(Debug, Clone)]
pub struct TokenKey {
    /// CKA_ID shared by the private and public object.
    pub id: Vec<u8>,
    /// The public key read back from the token.
    pub public: PublicKey,
}

fn der_error(context: &'static str) -> impl FnOnce(der::Error) -> TokenError {
    move |e| TokenError::Der {
        context,
        source: Box::new(e),
    }
}

fn curve_oid(curve: EcCurve) -> ObjectIdentifier {
    match curve {
        EcCurve::P256 => OID_P256,
        EcCurve::P384 => OID_P384,
    }
}

/// CKA_EC_PARAMS of a NIST curve: its DER OID.
pub(super) fn curve_params(curve: EcCurve) -> Result<Vec<u8>, TokenError> {
    curve_oid(curve)
        .to_der()
        .map_err(der_error("encoding the curve OID (CKA_EC_PARAMS)"))
}

/// The NIST curve CKA_EC_PARAMS names, if it is one orgkey uses.
fn curve_of_params(params: &[u8]) -> Option<EcCurve> {
    let oid = ObjectIdentifier::from_der(params).ok()?;
    [EcCurve::P256, EcCurve::P384]
        .into_iter()
        .find(|c| curve_oid(*c) == oid)
}

/// CKA_EC_PARAMS for Ed25519 as the profile says the token wants it.
pub(super) fn ed25519_params(ed: Ed25519Params) -> Result<Vec<u8>, TokenError> {
    let context = "encoding the Ed25519 curve (CKA_EC_PARAMS)";
    match ed {
        Ed25519Params::Oid => OID_ED25519.to_der().map_err(der_error(context)),
        Ed25519Params::Printable => PrintableStringRef::new(NAME_ED25519)
            .and_then(|name| name.to_der())
            .map_err(der_error(context)),
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point.
pub(super) fn der_octet_string(point: &[u8]) -> Result<Vec<u8>, TokenError> {
    OctetStringRef::new(point)
        .and_then(|octets| octets.to_der())
        .map_err(der_error("encoding CKA_EC_POINT"))
}

fn ec_params(kind: KeyKind, ed: Ed25519Params) -> Result<Option<Vec<u8>>, TokenError> {
    match kind {
        KeyKind::Ec(curve) => curve_params(curve).map(Some),
        KeyKind::Ed25519 => ed25519_params(ed).map(Some),
        KeyKind::Rsa(_) => Ok(None),
    }
}

/// Strips the DER OCTET STRING wrapper from CKA_EC_POINT; some tokens return
/// the raw point, which is passed through when it already has the right length.
fn unwrap_octet_string(v: &[u8], expected_len: usize) -> Result<Vec<u8>, TokenError> {
    if v.len() == expected_len {
        return Ok(v.to_vec());
    }
    let point = <&OctetStringRef>::from_der(v)
        .map_err(der_error("CKA_EC_POINT is not a DER octet string"))?;
    if point.as_bytes().len() != expected_len {
        return Err(TokenError::BadValue(format!(
            "CKA_EC_POINT holds {} bytes where {expected_len} were expected",
            point.as_bytes().len()
        )));
    }
    Ok(point.as_bytes().to_vec())
}

fn attr_bytes(attrs: &[Attribute], t: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, t) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.as_slice()),
        _ => None,
    })
}

pub(super) fn read_public(
    session: &Session,
    handle: ObjectHandle,
) -> Result<PublicKey, TokenError> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .ck("reading a public key")?;
    let key_type = attrs
        .iter()
        .find_map(|a| match a {
            Attribute::KeyType(k) => Some(*k),
            _ => None,
        })
        .ok_or_else(|| TokenError::BadValue("public key without CKA_KEY_TYPE".into()))?;
    let missing = |what: &str| TokenError::BadValue(format!("public key without {what}"));
    if key_type == KeyType::EC {
        let params =
            attr_bytes(&attrs, AttributeType::EcParams).ok_or_else(|| missing("CKA_EC_PARAMS"))?;
        let curve = curve_of_params(params)
            .ok_or_else(|| TokenError::Unsupported(format!("EC curve {}", hex::encode(params))))?;
        let raw =
            attr_bytes(&attrs, AttributeType::EcPoint).ok_or_else(|| missing("CKA_EC_POINT"))?;
        let point = unwrap_octet_string(raw, 1 + 2 * curve.field_len())?;
        if point[0] != 0x04 {
            return Err(TokenError::BadValue("EC point is not uncompressed".into()));
        }
        Ok(PublicKey::Ec { curve, point })
    } else if key_type == KeyType::EC_EDWARDS {
        let raw =
            attr_bytes(&attrs, AttributeType::EcPoint).ok_or_else(|| missing("CKA_EC_POINT"))?;
        let point = unwrap_octet_string(raw, 32)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(&point);
        Ok(PublicKey::Ed25519(a))
    } else if key_type == KeyType::RSA {
        let n = attr_bytes(&attrs, AttributeType::Modulus).ok_or_else(|| missing("CKA_MODULUS"))?;
        let e = attr_bytes(&attrs, AttributeType::PublicExponent)
            .ok_or_else(|| missing("CKA_PUBLIC_EXPONENT"))?;
        let strip = |b: &[u8]| b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..].to_vec();
        Ok(PublicKey::Rsa {
            n: strip(n),
            e: strip(e),
        })
    } else {
        Err(TokenError::Unsupported(format!("key type {key_type}")))
    }
}

fn find_one(
    session: &Session,
    class: ObjectClass,
    id: &[u8],
    what: &str,
) -> Result<ObjectHandle, TokenError> {
    let found = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .ck("finding a key object")?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(TokenError::KeyNotFound {
            what: what.to_string(),
            id: hex::encode(id),
        }),
        _ => Err(TokenError::BadValue(format!(
            "{} objects share CKA_ID {} ({what})",
            found.len(),
            hex::encode(id)
        ))),
    }
}

/// A private key's export attributes: CKA_EXTRACTABLE true together with
/// CKA_WRAP_WITH_TRUSTED (only a wrapping key the security officer trusts
/// can export it), or CKA_EXTRACTABLE false. Whether the token takes
/// CKA_WRAP_WITH_TRUSTED is profile data (`[keys] wrap_with_trusted`); where
/// it does not, no key is made exportable: an extractable key without the
/// attribute could be wrapped out under any key.
pub(super) fn export_attributes(
    exportable: bool,
    options: &super::TokenOptions,
) -> Result<Vec<Attribute>, TokenError> {
    match (exportable, options.wrap_with_trusted) {
        (false, _) => Ok(vec![Attribute::Extractable(false)]),
        (true, true) => Ok(vec![
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
        ]),
        (true, false) => Err(TokenError::Unsupported(
            "an exportable key needs CKA_WRAP_WITH_TRUSTED, which this token does not accept \
             (HSM profile: [keys] wrap_with_trusted = false); make it non-exportable"
                .into(),
        )),
    }
}

/// The error of a call whose template carried `attrs`: a refused
/// CKA_WRAP_WITH_TRUSTED names the profile setting.
pub(super) fn template_error(attrs: &[Attribute]) -> impl FnOnce(TokenError) -> TokenError {
    let sent = attrs
        .iter()
        .any(|a| matches!(a, Attribute::WrapWithTrusted(true)));
    move |e| {
        if sent {
            e.with_wrap_with_trusted_sent()
        } else {
            e
        }
    }
}

fn wipe_attributes(attrs: &mut [Attribute]) {
    use zeroize::Zeroize;
    for a in attrs {
        match a {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

impl Token {
    /// Generates a key pair from `spec` with a fresh random CKA_ID.
    pub fn generate_key_pair(&self, spec: &KeySpec) -> Result<TokenKey, TokenError> {
        let id: [u8; 16] = rand::random();
        let id = id.to_vec();
        let label = spec.label.as_bytes().to_vec();
        let sign = spec.usage == KeyUsage::Sign;
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(id.clone()),
            Attribute::Label(label.clone()),
            Attribute::Verify(sign),
        ];
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label),
            Attribute::Sign(sign),
            Attribute::Derive(spec.usage == KeyUsage::Derive),
            Attribute::Decrypt(spec.usage == KeyUsage::Decrypt),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Modifiable(false),
        ];
        private.extend(export_attributes(spec.exportable, &self.options())?);
        let mechanism = match spec.kind {
            KeyKind::Ec(_) | KeyKind::Ed25519 => {
                if let Some(params) = ec_params(spec.kind, self.options().ed25519_params)? {
                    public.push(Attribute::EcParams(params));
                }
                if spec.kind == KeyKind::Ed25519 {
                    Mechanism::EccEdwardsKeyPairGen
                } else {
                    Mechanism::EccKeyPairGen
                }
            }
            KeyKind::Rsa(bits) => {
                public.push(Attribute::ModulusBits((bits as u64).into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                public.push(Attribute::Encrypt(spec.usage == KeyUsage::Decrypt));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        self.with_session(|s| {
            let (pub_h, priv_h) = s
                .generate_key_pair(&mechanism, &public, &private)
                .ck("generating a key pair (C_GenerateKeyPair)")
                .map_err(template_error(&private))?;
            match read_public(s, pub_h) {
                Ok(public) => Ok(TokenKey {
                    id: id.clone(),
                    public,
                }),
                Err(e) => {
                    // Leave nothing half-made behind.
                    let _ = s.destroy_object(priv_h);
                    let _ = s.destroy_object(pub_h);
                    Err(e)
                }
            }
        })
    }

    /// Creates a signing key pair from imported key material (an existing
    /// CA key): the private object is sensitive, private, token-resident and
    /// sign-only, extractable only under a trusted wrapping key, exactly like
    /// a generated one. Nothing is left behind if either object fails.
    pub fn import_key_pair(
        &self,
        key: &ImportedKey,
        label: &str,
        exportable: bool,
    ) -> Result<TokenKey, TokenError> {
        let id: [u8; 16] = rand::random();
        let id = id.to_vec();
        let label = label.as_bytes().to_vec();
        let mut private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label.clone()),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Modifiable(false),
        ];
        private.extend(export_attributes(exportable, &self.options())?);
        let mut public = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(id.clone()),
            Attribute::Label(label),
            Attribute::Verify(true),
        ];
        match key {
            ImportedKey::Ec {
                curve,
                scalar,
                point,
            } => {
                let params = curve_params(*curve)?;
                let wrapped = der_octet_string(point)?;
                private.push(Attribute::KeyType(KeyType::EC));
                private.push(Attribute::EcParams(params.clone()));
                private.push(Attribute::Value(scalar.to_vec()));
                public.push(Attribute::KeyType(KeyType::EC));
                public.push(Attribute::EcParams(params));
                public.push(Attribute::EcPoint(wrapped));
            }
            ImportedKey::Rsa { n, e, private: p } => {
                private.push(Attribute::KeyType(KeyType::RSA));
                private.push(Attribute::Modulus(n.clone()));
                private.push(Attribute::PublicExponent(e.clone()));
                private.push(Attribute::PrivateExponent(p.d.clone()));
                private.push(Attribute::Prime1(p.p.clone()));
                private.push(Attribute::Prime2(p.q.clone()));
                private.push(Attribute::Exponent1(p.dp.clone()));
                private.push(Attribute::Exponent2(p.dq.clone()));
                private.push(Attribute::Coefficient(p.qinv.clone()));
                public.push(Attribute::KeyType(KeyType::RSA));
                public.push(Attribute::Modulus(n.clone()));
                public.push(Attribute::PublicExponent(e.clone()));
            }
        }
        let result = self.with_session(|s| {
            let priv_h = s
                .create_object(&private)
                .ck("importing a private key (C_CreateObject)")
                .map_err(template_error(&private))?;
            let pub_h = match s.create_object(&public) {
                Ok(h) => h,
                Err(e) => {
                    let _ = s.destroy_object(priv_h);
                    return Err(e).ck("importing a public key (C_CreateObject)");
                }
            };
            match read_public(s, pub_h) {
                Ok(public) => Ok(TokenKey {
                    id: id.clone(),
                    public,
                }),
                Err(e) => {
                    let _ = s.destroy_object(priv_h);
                    let _ = s.destroy_object(pub_h);
                    Err(e)
                }
            }
        });
        // The attribute vectors held the secret values.
        wipe_attributes(&mut private);
        result
    }

    /// Reads the public key of the key pair with CKA_ID `id`.
    pub fn public_key(&self, id: &[u8], what: &str) -> Result<PublicKey, TokenError> {
        self.with_session(|s| {
            let h = find_one(s, ObjectClass::PUBLIC_KEY, id, what)?;
            read_public(s, h)
        })
    }

    /// Destroys both halves of the key pair with CKA_ID `id` (whatever of it exists).
    pub fn destroy_key_pair(&self, id: &[u8]) -> Result<(), TokenError> {
        self.with_session(|s| {
            let objects = s
                .find_objects(&[Attribute::Id(id.to_vec())])
                .ck("finding key objects to destroy")?;
            for h in objects {
                s.destroy_object(h).ck("destroying a key object")?;
            }
            Ok(())
        })
    }

    /// A signer for the private key with CKA_ID `id`. Needs a login (private
    /// objects are invisible before ignition).
    pub fn signer(
        self: &Arc<Self>,
        id: &[u8],
        public: PublicKey,
        what: &str,
    ) -> Result<TokenSigner, TokenError> {
        let handle = self.with_session(|s| find_one(s, ObjectClass::PRIVATE_KEY, id, what))?;
        Ok(TokenSigner {
            token: Arc::clone(self),
            handle,
            public,
        })
    }
}

/// A private key in the token that signs digests. Cheap to share; each
/// signature borrows a session from the token's pool.
pub struct TokenSigner {
    token: Arc<Token>,
    handle: ObjectHandle,
    public: PublicKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// C_Sign with a pooled session; the call's duration goes to the
    /// metrics (the wait for a session does not).
    fn c_sign(
        &self,
        mech: &Mechanism,
        data: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, TokenError> {
        self.token.with_session(|s| {
            let started = std::time::Instant::now();
            let sig = s.sign(mech, self.handle, data);
            crate::metrics::token_operation(
                crate::metrics::TokenOperation::Sign,
                started.elapsed(),
            );
            sig.ck(what)
        })
    }

    /// The raw PKCS#11 operation, exposed for the benchmark's raw token rate.
    pub fn sign_raw(&self, alg: DigestAlgorithm, digest: &[u8]) -> Result<Vec<u8>, TokenError> {
        if digest.len() != alg.output_len() {
            return Err(TokenError::BadValue(format!(
                "digest of {} bytes for a {}-byte algorithm",
                digest.len(),
                alg.output_len()
            )));
        }
        match &self.public {
            PublicKey::Ec { curve, .. } => {
                let sig = self.c_sign(&Mechanism::Ecdsa, digest, "signing (CKM_ECDSA)")?;
                if sig.len() != 2 * curve.field_len() {
                    return Err(TokenError::BadValue(format!(
                        "ECDSA signature of {} bytes",
                        sig.len()
                    )));
                }
                Ok(sig)
            }
            PublicKey::Ed25519(_) => {
                let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                let sig = self.c_sign(&mech, digest, "signing (CKM_EDDSA)")?;
                if sig.len() != 64 {
                    return Err(TokenError::BadValue(format!(
                        "EdDSA signature of {} bytes",
                        sig.len()
                    )));
                }
                Ok(sig)
            }
            PublicKey::Rsa { n, .. } => {
                let mut info = alg.digest_info_prefix().to_vec();
                info.extend_from_slice(digest);
                let sig = self.c_sign(&Mechanism::RsaPkcs, &info, "signing (CKM_RSA_PKCS)")?;
                if sig.len() > n.len() {
                    return Err(TokenError::BadValue(format!(
                        "RSA signature of {} bytes",
                        sig.len()
                    )));
                }
                Ok(sig)
            }
        }
    }
}

impl Signer for TokenSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign_digest(&self, alg: DigestAlgorithm, digest: &[u8]) -> Result<Vec<u8>, SignerError> {
        if digest.len() != alg.output_len() {
            return Err(SignerError::InvalidInput(
                "digest length does not match its algorithm",
            ));
        }
        self.sign_raw(alg, digest).map_err(seam_error)
    }
}

fn seam_error(e: TokenError) -> SignerError {
    match e {
        TokenError::NotLoggedIn => SignerError::Sealed,
        e if e.is_unavailable() => SignerError::Unavailable(Box::new(e)),
        e => SignerError::Failed(Box::new(e)),
    }
}

/// A private key in the token that decrypts (ECDH derive or RSA decrypt).
pub struct TokenDecrypter {
    token: Arc<Token>,
    id: Vec<u8>,
    public: PublicKey,
}

impl std::fmt::Debug for TokenDecrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenDecrypter")
            .field("id", &hex::encode(&self.id))
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A decrypter for the private key with CKA_ID `id`.
    pub fn decrypter(self: &Arc<Self>, id: &[u8], public: PublicKey) -> TokenDecrypter {
        TokenDecrypter {
            token: Arc::clone(self),
            id: id.to_vec(),
            public,
        }
    }
}

impl crate::signer::Decrypter for TokenDecrypter {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn ecdh(&self, peer_point: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError> {
        self.token
            .ecdh_derive(&self.id, peer_point)
            .map_err(seam_error)
    }

    fn rsa_decrypt(&self, ciphertext: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError> {
        self.token
            .rsa_decrypt(&self.id, ciphertext)
            .map_err(seam_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_params_are_the_der_encodings_tokens_expect() {
        // The bytes the hand-written encodings had (SoftHSM2 accepts them).
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let p384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        assert_eq!(curve_params(EcCurve::P256).unwrap(), p256);
        assert_eq!(curve_params(EcCurve::P384).unwrap(), p384);
        assert_eq!(
            ed25519_params(Ed25519Params::Oid).unwrap(),
            [0x06, 0x03, 0x2b, 0x65, 0x70]
        );
        assert_eq!(
            ed25519_params(Ed25519Params::Printable).unwrap(),
            b"\x13\x0cedwards25519"
        );
        assert_eq!(curve_of_params(&p256), Some(EcCurve::P256));
        assert_eq!(curve_of_params(&p384), Some(EcCurve::P384));
        // Ed25519, secp521r1, truncated and non-OID values are not NIST
        // curves orgkey uses.
        assert_eq!(curve_of_params(&[0x06, 0x03, 0x2b, 0x65, 0x70]), None);
        assert_eq!(
            curve_of_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
            None
        );
        assert_eq!(curve_of_params(&p256[..6]), None);
        assert_eq!(curve_of_params(b"\x13\x0cedwards25519"), None);
    }

    #[test]
    fn ec_points_encode_as_the_old_bytes() {
        for (len, header) in [
            (32, vec![0x04, 0x20]),
            (65, vec![0x04, 0x41]),
            (97, vec![0x04, 0x61]),
            (133, vec![0x04, 0x81, 0x85]),
        ] {
            let point = vec![0x04; len];
            let mut want = header;
            want.extend(&point);
            assert_eq!(der_octet_string(&point).unwrap(), want, "{len} bytes");
        }
    }

    #[test]
    fn a_long_ec_point_round_trips() {
        // Past 255 bytes the length takes two octets (the old encoder wrote
        // `len as u8` after 0x81: 300 came out as 44).
        let point: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let wrapped = der_octet_string(&point).unwrap();
        assert_eq!(wrapped[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(wrapped.len(), 304);
        assert_eq!(unwrap_octet_string(&wrapped, 300).unwrap(), point);
        // A length that disagrees with the content is refused.
        assert!(unwrap_octet_string(&wrapped[..303], 300).is_err());
        assert!(unwrap_octet_string(&wrapped, 299).is_err());
    }

    #[test]
    fn ec_point_wrapper_is_stripped_or_passed_through() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&point);
        assert_eq!(unwrap_octet_string(&wrapped, 65).unwrap(), point);
        assert_eq!(unwrap_octet_string(&point, 65).unwrap(), point);
        let mut p384 = vec![0x04];
        p384.extend([9u8; 96]);
        let mut wrapped384 = vec![0x04, 97];
        wrapped384.extend(&p384);
        assert_eq!(unwrap_octet_string(&wrapped384, 97).unwrap(), p384);
        assert!(unwrap_octet_string(&wrapped[..40], 65).is_err());
        assert!(unwrap_octet_string(&[0x30, 2, 1, 1], 65).is_err());
    }
}
