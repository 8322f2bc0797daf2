//! The ignition passphrase alone cannot get a wrapped copy of an org key
//! out: a raw C_WrapKey with an AES key the user made up is refused by the
//! token (CKA_WRAP_WITH_TRUSTED), and the user cannot mark a key trusted.
//! Talks PKCS#11 directly (cryptoki), as an attacker with the PIN would.
//! One test per file: it sets the module's config variable for this process.

mod common;
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn a_user_made_wrapping_key_cannot_export_org_keys() {
    let a = Appliance::with_org_key("p256");
    // SAFETY: the only test in this binary, before any other thread.
    let (var, conf) = a.module_env();
    unsafe { std::env::set_var(var, conf) };
    let ctx = Pkcs11::new(a.module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == "orgkey")
        .expect("the appliance token");
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PASSPHRASE.into())))
        .unwrap();

    // A wrapping key whose value the user knows.
    let kek = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![7u8; 32]),
            Attribute::Token(false),
            Attribute::Wrap(true),
        ])
        .unwrap();
    let org_keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(org_keys.len(), 3, "certify, sign and encrypt keys");
    // What each token answers (profile data: Kryoptic has no
    // CKM_AES_KEY_WRAP_PAD and never lets a key be marked trusted).
    let (wrap_refusal, trusted_refusal) = match test_profile().as_str() {
        "softhsm2" => (RvError::KeyNotWrappable, RvError::AttributeReadOnly),
        "kryoptic" => (RvError::MechanismInvalid, RvError::AttributeTypeInvalid),
        other => panic!("no expectations recorded for {other}"),
    };
    for key in org_keys {
        match session.wrap_key(&Mechanism::AesKeyWrapPad, kek, key) {
            Err(Error::Pkcs11(rv, _)) if rv == wrap_refusal => {}
            other => panic!("wrapping an org key with a user key must fail, got {other:?}"),
        }
    }

    // Nor can the user make a trusted key.
    let trusted = session.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Value(vec![8u8; 32]),
        Attribute::Token(false),
        Attribute::Wrap(true),
        Attribute::Trusted(true),
    ]);
    assert!(
        matches!(trusted, Err(Error::Pkcs11(rv, _)) if rv == trusted_refusal),
        "{trusted:?}"
    );
    // The module stays mapped until the process exits: modules built on
    // OpenSSL crash exiting threads once unmapped (token::keep_module_loaded).
    drop(session);
    std::mem::forget(ctx);
}
