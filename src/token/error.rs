//! `TokenError`: every failing PKCS#11 call becomes a typed error that names
//! the function and the CKR_* code, with the cases callers act on (bad PIN,
//! not logged in, token gone) as their own variants. cryptoki's own error
//! stays inside [`Pkcs11Cause`], so no cryptoki type is part of the API.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// Errors from the token layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The PKCS#11 module could not be loaded or initialized.
    #[error("cannot load PKCS#11 module {path}: {source}")]
    Module {
        /// Module path
        path: String,
        /// Cause
        #[source]
        source: Pkcs11Cause,
    },
    /// No token matches the configured label/serial.
    #[error("no token with {selector} found (tokens present: {present})")]
    NotFound {
        /// What was asked for
        selector: String,
        /// Labels/serials of tokens that are present
        present: String,
    },
    /// More than one token matches.
    #[error("{count} tokens match {selector}: add the serial to the selection")]
    Ambiguous {
        /// What was asked for
        selector: String,
        /// How many matched
        count: usize,
    },
    /// C_Login refused the ignition passphrase.
    #[error("bad ignition passphrase")]
    BadPin,
    /// C_Login refused the security officer PIN.
    #[error("bad security officer PIN")]
    BadSoPin,
    /// The token locked the user PIN after too many failures.
    #[error(
        "the token has locked the ignition passphrase (reset it with the security officer PIN)"
    )]
    PinLocked,
    /// An operation needed a logged-in session.
    #[error("the token is not logged in (appliance sealed)")]
    NotLoggedIn,
    /// The device, its link or the session went away.
    #[error("token unavailable: {function} returned {code}")]
    Unavailable {
        /// PKCS#11 function
        function: String,
        /// CKR_* name
        code: String,
    },
    /// Any other PKCS#11 failure.
    #[error("{context}: {source}")]
    Pkcs11 {
        /// What orgkey was doing
        context: &'static str,
        /// The function and its return value ([`Pkcs11Cause::code`] for
        /// callers that branch on it)
        #[source]
        source: Pkcs11Cause,
    },
    /// A key object orgkey expects is missing from the token.
    #[error("key object {what} (CKA_ID {id}) not found in the token")]
    KeyNotFound {
        /// Role of the key
        what: String,
        /// Hex CKA_ID
        id: String,
    },
    /// The token refused CKA_WRAP_WITH_TRUSTED in a key template
    /// (CKR_ATTRIBUTE_TYPE_INVALID) although its HSM profile says it takes
    /// the attribute.
    #[error(
        "{context}: the token refused an attribute of a key template that carried \
         CKA_WRAP_WITH_TRUSTED (CKR_ATTRIBUTE_TYPE_INVALID). If the token does not support that \
         attribute, set `wrap_with_trusted = false` under [keys] in its HSM profile ([token] \
         profile): org keys are then made non-exportable (back them up with the HSM vendor's \
         scheme)"
    )]
    WrapWithTrustedRefused {
        /// What orgkey was doing
        context: &'static str,
        /// The function and its return value
        #[source]
        source: Pkcs11Cause,
    },
    /// The token or profile cannot do what was asked.
    #[error("not supported by this token: {0}")]
    Unsupported(String),
    /// The token returned something malformed.
    #[error("unexpected value from the token: {0}")]
    BadValue(String),
    /// Every pooled session stayed busy for the whole wait: the token hangs
    /// (calls that never return hold the sessions) or is far past its load.
    #[error("no token session became free within {waited:?} (all {sessions} in use)")]
    Busy {
        /// How long the call waited for a session
        waited: std::time::Duration,
        /// Size of the session pool
        sessions: usize,
    },
    /// A DER attribute value (CKA_EC_PARAMS, CKA_EC_POINT) could not be
    /// encoded, or the token returned one that does not decode.
    #[error("{context}: {source}")]
    Der {
        /// Which attribute, doing what
        context: &'static str,
        /// Cause (from the `der` crate)
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A non-PKCS#11 failure inside cryptoki (conversion, missing symbol).
    #[error("{context}: {source}")]
    Other {
        /// What orgkey was doing
        context: &'static str,
        /// Cause
        #[source]
        source: Pkcs11Cause,
    },
}

/// A failure as the PKCS#11 library reported it: a function and its CKR_*
/// return value, or a failure of the binding itself (module loading,
/// conversions). Opaque: callers ask it what they need.
pub struct Pkcs11Cause(CkError);

impl Pkcs11Cause {
    pub(crate) fn new(e: CkError) -> Self {
        Self(e)
    }

    /// The CKR_* name of the return value (`CKR_KEY_NOT_WRAPPABLE`), if a
    /// PKCS#11 function returned one.
    pub fn code(&self) -> Option<String> {
        match &self.0 {
            CkError::Pkcs11(rv, _) => Some(ckr_name(*rv)),
            _ => None,
        }
    }

    /// The PKCS#11 function (`C_WrapKey`), if one returned the error.
    pub fn function(&self) -> Option<String> {
        match &self.0 {
            CkError::Pkcs11(_, f) => Some(function_name(*f)),
            _ => None,
        }
    }

    /// Whether the token refused to wrap a key (`CKR_KEY_NOT_WRAPPABLE`):
    /// the key is not extractable under this wrapping key, or the token
    /// cannot wrap keys of its type.
    pub fn is_key_not_wrappable(&self) -> bool {
        matches!(&self.0, CkError::Pkcs11(RvError::KeyNotWrappable, _))
    }

    /// Whether the token does not know an attribute of the template
    /// (`CKR_ATTRIBUTE_TYPE_INVALID`).
    pub fn is_attribute_type_invalid(&self) -> bool {
        matches!(&self.0, CkError::Pkcs11(RvError::AttributeTypeInvalid, _))
    }
}

impl std::fmt::Display for Pkcs11Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            CkError::Pkcs11(rv, function) => {
                write!(f, "{} returned {}", function_name(*function), ckr_name(*rv))
            }
            other => other.fmt(f),
        }
    }
}

impl std::fmt::Debug for Pkcs11Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Pkcs11Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
fn ckr_name(rv: RvError) -> String {
    let dbg = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in dbg.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn function_name(f: Function) -> String {
    format!("C_{f:?}")
}

impl TokenError {
    /// Classifies a cryptoki error raised while doing `context`.
    pub(crate) fn from_ck(context: &'static str, e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, f) => match rv {
                RvError::PinIncorrect | RvError::PinLenRange => TokenError::BadPin,
                RvError::PinLocked => TokenError::PinLocked,
                RvError::UserNotLoggedIn => TokenError::NotLoggedIn,
                RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::CryptokiNotInitialized => TokenError::Unavailable {
                    function: function_name(f),
                    code: ckr_name(rv),
                },
                _ => TokenError::Pkcs11 {
                    context,
                    source: Pkcs11Cause::new(e),
                },
            },
            other => TokenError::Other {
                context,
                source: Pkcs11Cause::new(other),
            },
        }
    }

    /// Whether this error means the device or session is gone, or the token
    /// hangs (retry after re-initializing), as opposed to a refusal of this
    /// request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            TokenError::Unavailable { .. } | TokenError::Busy { .. }
        )
    }

    /// The CKR_* name a PKCS#11 function returned, if that is what failed.
    pub fn code(&self) -> Option<String> {
        match self {
            TokenError::Unavailable { code, .. } => Some(code.clone()),
            TokenError::Pkcs11 { source, .. }
            | TokenError::WrapWithTrustedRefused { source, .. }
            | TokenError::Module { source, .. }
            | TokenError::Other { source, .. } => source.code(),
            _ => None,
        }
    }

    /// Whether the token refused to wrap a key (`CKR_KEY_NOT_WRAPPABLE`).
    pub fn is_key_not_wrappable(&self) -> bool {
        matches!(self, TokenError::Pkcs11 { source, .. } if source.is_key_not_wrappable())
    }

    /// After a key template with CKA_WRAP_WITH_TRUSTED failed: a refusal of
    /// an attribute becomes [`TokenError::WrapWithTrustedRefused`], which
    /// names the profile setting; anything else stays as it is.
    pub(crate) fn with_wrap_with_trusted_sent(self) -> Self {
        match self {
            TokenError::Pkcs11 { context, source } if source.is_attribute_type_invalid() => {
                TokenError::WrapWithTrustedRefused { context, source }
            }
            other => other,
        }
    }
}

/// `result.ck("doing x")?` turns a cryptoki error into a [`TokenError`].
pub(crate) trait CkResultExt<T> {
    fn ck(self, context: &'static str) -> Result<T, TokenError>;
}

impl<T> CkResultExt<T> for Result<T, CkError> {
    fn ck(self, context: &'static str) -> Result<T, TokenError> {
        self.map_err(|e| TokenError::from_ck(context, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_standard_spelling() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::KeyNotWrappable), "CKR_KEY_NOT_WRAPPABLE");
    }

    #[test]
    fn wrong_pin_reads_as_bad_ignition_passphrase() {
        let e = TokenError::from_ck(
            "login",
            CkError::Pkcs11(RvError::PinIncorrect, Function::Login),
        );
        assert_eq!(e.to_string(), "bad ignition passphrase");
        let e = TokenError::from_ck(
            "sign",
            CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign),
        );
        assert!(e.is_unavailable());
        assert_eq!(
            e.to_string(),
            "token unavailable: C_Sign returned CKR_DEVICE_REMOVED"
        );
        let e = TokenError::from_ck(
            "generating the signing key",
            CkError::Pkcs11(RvError::TemplateInconsistent, Function::GenerateKeyPair),
        );
        assert_eq!(
            e.to_string(),
            "generating the signing key: C_GenerateKeyPair returned CKR_TEMPLATE_INCONSISTENT"
        );
    }

    #[test]
    fn a_refused_wrap_with_trusted_names_the_profile_setting() {
        let refused = || {
            TokenError::from_ck(
                "generating a key pair (C_GenerateKeyPair)",
                CkError::Pkcs11(RvError::AttributeTypeInvalid, Function::GenerateKeyPair),
            )
        };
        let e = refused().with_wrap_with_trusted_sent();
        assert!(
            matches!(e, TokenError::WrapWithTrustedRefused { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("`wrap_with_trusted = false` under [keys]"),
            "{msg}"
        );
        assert!(msg.contains("CKR_ATTRIBUTE_TYPE_INVALID"), "{msg}");
        assert_eq!(e.code().as_deref(), Some("CKR_ATTRIBUTE_TYPE_INVALID"));
        // Only that refusal is explained so.
        let other = TokenError::from_ck(
            "generating a key pair (C_GenerateKeyPair)",
            CkError::Pkcs11(RvError::TemplateInconsistent, Function::GenerateKeyPair),
        )
        .with_wrap_with_trusted_sent();
        assert!(matches!(other, TokenError::Pkcs11 { .. }), "{other:?}");
        assert!(matches!(refused(), TokenError::Pkcs11 { .. }));
    }

    #[test]
    fn callers_branch_on_the_typed_return_value_not_on_text() {
        let e = TokenError::from_ck(
            "wrapping a private key (C_WrapKey)",
            CkError::Pkcs11(RvError::KeyNotWrappable, Function::WrapKey),
        );
        assert!(e.is_key_not_wrappable());
        assert_eq!(e.code().as_deref(), Some("CKR_KEY_NOT_WRAPPABLE"));
        let TokenError::Pkcs11 { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.function().as_deref(), Some("C_WrapKey"));
        // The cause stays reachable as the error's source.
        let cause = std::error::Error::source(&e).expect("a source");
        assert_eq!(
            cause.to_string(),
            "C_WrapKey returned CKR_KEY_NOT_WRAPPABLE"
        );

        let other = TokenError::from_ck(
            "wrapping a private key (C_WrapKey)",
            CkError::Pkcs11(RvError::TemplateInconsistent, Function::WrapKey),
        );
        assert!(!other.is_key_not_wrappable());
        assert_eq!(other.code().as_deref(), Some("CKR_TEMPLATE_INCONSISTENT"));
        let gone = TokenError::from_ck(
            "sign",
            CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign),
        );
        assert!(!gone.is_key_not_wrappable());
        assert_eq!(gone.code().as_deref(), Some("CKR_DEVICE_REMOVED"));
        let binding = TokenError::from_ck("reading an attribute", CkError::InvalidValue);
        assert_eq!(binding.code(), None);
        assert!(std::error::Error::source(&binding).is_some());
    }
}
