//! Operations outside day-to-day signing: changing and resetting the
//! ignition passphrase, the key backup ceremony (wrap under a temporary
//! wrapping key that the security officer marks trusted), unwrapping a
//! backup into a token, and the private-key operations of the org
//! encryption subkey (ECDH derive, RSA decrypt) for state backups.

use super::error::CkResultExt;
use super::keys::{KeyKind, KeyUsage, TokenKey};
use super::{Token, TokenError};
use crate::signer::PublicKey;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// A private key wrapped by the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// CKA_ID of the key pair.
    pub id: Vec<u8>,
    /// RFC 5649 AES key wrap (with padding) of the PKCS#8 private key.
    pub blob: Vec<u8>,
}

/// What an unwrapped key pair must look like.
#[derive(Debug, Clone)]
pub struct UnwrapSpec<'a> {
    /// Key type.
    pub kind: KeyKind,
    /// Its one usage.
    pub usage: KeyUsage,
    /// CKA_ID to give both halves.
    pub id: &'a [u8],
    /// CKA_LABEL.
    pub label: &'a str,
    /// Extractable under a trusted wrapping key again.
    pub exportable: bool,
    /// The public key, to recreate the public object.
    pub public: &'a PublicKey,
}

fn pin(s: &SecretString) -> AuthPin {
    AuthPin::new(s.expose_secret().into())
}

fn so_login(session: &Session, so_pin: &SecretString) -> Result<(), TokenError> {
    session
        .login(UserType::So, Some(&pin(so_pin)))
        .ck("security officer login")
        .map_err(|e| match e {
            TokenError::BadPin => TokenError::BadSoPin,
            e => e,
        })
}

fn aes_key_template(value: &[u8], trusted: bool, wrap: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Value(value.to_vec()),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(wrap),
        Attribute::Unwrap(!wrap),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ];
    if trusted {
        t.push(Attribute::Trusted(true));
    }
    t
}

fn wipe(attrs: &mut [Attribute]) {
    use zeroize::Zeroize;
    for a in attrs {
        if let Attribute::Value(v) = a {
            v.zeroize();
        }
    }
}

fn private_handle(session: &Session, id: &[u8]) -> Result<ObjectHandle, TokenError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .ck("finding a private key")?;
    match found.as_slice() {
        [h] => Ok(*h),
        _ => Err(TokenError::KeyNotFound {
            what: "private key".into(),
            id: hex::encode(id),
        }),
    }
}

impl Token {
    /// Changes the ignition passphrase (C_SetPIN in a user session).
    pub fn change_user_pin(
        &self,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<(), TokenError> {
        let session = self
            .ctx
            .open_rw_session(self.slot())
            .ck("opening a session")?;
        session
            .login(UserType::User, Some(&pin(old)))
            .ck("logging in with the current ignition passphrase")?;
        let res = session
            .set_pin(&pin(old), &pin(new))
            .ck("changing the ignition passphrase (C_SetPIN)");
        let _ = session.logout();
        res
    }

    /// Sets a new ignition passphrase with the security officer PIN
    /// (C_InitPIN), for an operator who lost the old one.
    pub fn reset_user_pin(
        &self,
        so_pin: &SecretString,
        new: &SecretString,
    ) -> Result<(), TokenError> {
        let session = self
            .ctx
            .open_rw_session(self.slot())
            .ck("opening a session")?;
        so_login(&session, so_pin)?;
        let res = session
            .init_pin(&pin(new))
            .ck("setting the ignition passphrase (C_InitPIN)");
        let _ = session.logout();
        res
    }

    /// The backup ceremony: the security officer creates a session-only AES
    /// wrapping key from `kek` and marks it CKA_TRUSTED; the same session
    /// then logs in as the user and wraps the private keys `ids` under it
    /// (CKM_AES_KEY_WRAP_PAD, inside the token). The wrapping key is
    /// destroyed before this returns, whatever happens.
    pub fn wrap_under_trusted_key(
        &self,
        so_pin: &SecretString,
        user_pin: &SecretString,
        kek: &Zeroizing<[u8; 32]>,
        ids: &[Vec<u8>],
    ) -> Result<Vec<WrappedKey>, TokenError> {
        let session = self
            .ctx
            .open_rw_session(self.slot())
            .ck("opening a session")?;
        so_login(&session, so_pin)?;
        let mut template = aes_key_template(kek.as_slice(), true, true);
        let created = session
            .create_object(&template)
            .ck("creating the trusted wrapping key (C_CreateObject as security officer)");
        wipe(&mut template);
        let kek_handle = created?;
        let result = (|| {
            session.logout().ck("security officer logout")?;
            session
                .login(UserType::User, Some(&pin(user_pin)))
                .ck("user login")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let h = private_handle(&session, id)?;
                let blob = session
                    .wrap_key(&Mechanism::AesKeyWrapPad, kek_handle, h)
                    .ck("wrapping a private key (C_WrapKey)")?;
                out.push(WrappedKey {
                    id: id.clone(),
                    blob,
                });
            }
            Ok(out)
        })();
        let _ = session.destroy_object(kek_handle);
        let _ = session.logout();
        result
    }

    /// Unwraps a backed-up private key into a sensitive token object and
    /// recreates its public object (the user must be logged in). On failure
    /// nothing is left behind.
    pub fn unwrap_key_pair(
        &self,
        kek: &Zeroizing<[u8; 32]>,
        blob: &[u8],
        spec: &UnwrapSpec<'_>,
    ) -> Result<TokenKey, TokenError> {
        let key_type = match spec.kind {
            KeyKind::Ec(_) => KeyType::EC,
            KeyKind::Ed25519 => KeyType::EC_EDWARDS,
            KeyKind::Rsa(_) => KeyType::RSA,
        };
        let mut private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Id(spec.id.to_vec()),
            Attribute::Label(spec.label.as_bytes().to_vec()),
            Attribute::Sign(spec.usage == KeyUsage::Sign),
            Attribute::Derive(spec.usage == KeyUsage::Derive),
            Attribute::Decrypt(spec.usage == KeyUsage::Decrypt),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            // No CKA_MODIFIABLE false: SoftHSM2 refuses it in an unwrap
            // template (CKR_ATTRIBUTE_READ_ONLY); `token check` warns.
        ];
        private.extend(super::keys::export_attributes(
            spec.exportable,
            &self.options(),
        )?);
        let mut public = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(spec.id.to_vec()),
            Attribute::Label(spec.label.as_bytes().to_vec()),
            Attribute::Verify(spec.usage == KeyUsage::Sign),
        ];
        match spec.public {
            PublicKey::Ec { curve, point } => {
                public.push(Attribute::EcParams(super::keys::curve_params(*curve)?));
                public.push(Attribute::EcPoint(super::keys::der_octet_string(point)?));
            }
            PublicKey::Ed25519(a) => {
                let params = super::keys::ed25519_params(self.options().ed25519_params)?;
                public.push(Attribute::EcParams(params));
                public.push(Attribute::EcPoint(super::keys::der_octet_string(a)?));
            }
            PublicKey::Rsa { n, e } => {
                public.push(Attribute::Modulus(n.clone()));
                public.push(Attribute::PublicExponent(e.clone()));
                public.push(Attribute::Encrypt(spec.usage == KeyUsage::Decrypt));
            }
        }
        self.with_session(|s| {
            let mut template = aes_key_template(kek.as_slice(), false, false);
            let created = s
                .create_object(&template)
                .ck("creating the unwrapping key (C_CreateObject)");
            wipe(&mut template);
            let kek_handle = created?;
            let priv_h = s
                .unwrap_key(&Mechanism::AesKeyWrapPad, kek_handle, blob, &private)
                .ck("unwrapping a private key (C_UnwrapKey)")
                .map_err(super::keys::template_error(&private));
            let _ = s.destroy_object(kek_handle);
            let priv_h = priv_h?;
            let pub_h = match s.create_object(&public) {
                Ok(h) => h,
                Err(e) => {
                    let _ = s.destroy_object(priv_h);
                    return Err(e).ck("recreating a public key (C_CreateObject)");
                }
            };
            match super::keys::read_public(s, pub_h) {
                Ok(public) => Ok(TokenKey {
                    id: spec.id.to_vec(),
                    public,
                }),
                Err(e) => {
                    let _ = s.destroy_object(priv_h);
                    let _ = s.destroy_object(pub_h);
                    Err(e)
                }
            }
        })
    }

    /// ECDH inside the token with the private key `id` and the peer's
    /// uncompressed point; returns the shared secret (x coordinate).
    pub fn ecdh_derive(
        &self,
        id: &[u8],
        peer_point: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        self.with_session(|s| {
            let h = private_handle(s, id)?;
            let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_point);
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ];
            let secret = s
                .derive_key(&Mechanism::Ecdh1Derive(params), h, &template)
                .ck("deriving an ECDH secret (C_DeriveKey)")?;
            let value = s
                .get_attributes(secret, &[AttributeType::Value])
                .ck("reading the derived secret");
            let _ = s.destroy_object(secret);
            let value = value?;
            value
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(Zeroizing::new(v)),
                    _ => None,
                })
                .ok_or_else(|| TokenError::BadValue("derived secret without CKA_VALUE".into()))
        })
    }

    /// RSA PKCS#1 v1.5 decryption inside the token with the private key `id`.
    pub fn rsa_decrypt(
        &self,
        id: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        self.with_session(|s| {
            let h = private_handle(s, id)?;
            s.decrypt(&Mechanism::RsaPkcs, h, ciphertext)
                .map(Zeroizing::new)
                .ck("decrypting (C_Decrypt)")
        })
    }
}
