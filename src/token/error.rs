//! `TokenError`: every failing PKCS#11 call becomes a typed error that names
//! the function and the CKR_* code, with the cases callers act on (bad PIN,
//! not logged in, token gone) as their own variants.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// Errors from the token layer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The PKCS#11 module could not be loaded or initialized.
    #[error("cannot load PKCS#11 module {path}: {source}")]
    Module {
        /// Module path
        path: String,
        /// Cause
        #[source]
        source: CkError,
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
    #[error("{context}: {function} returned {code}")]
    Pkcs11 {
        /// What orgkey was doing
        context: &'static str,
        /// PKCS#11 function
        function: String,
        /// CKR_* name
        code: String,
        /// The raw error code, for callers that branch on it
        rv: RvError,
    },
    /// A key object orgkey expects is missing from the token.
    #[error("key object {what} (CKA_ID {id}) not found in the token")]
    KeyNotFound {
        /// Role of the key
        what: String,
        /// Hex CKA_ID
        id: String,
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
        source: CkError,
    },
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: RvError) -> String {
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
    pub fn from_ck(context: &'static str, e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, f) => {
                let function = function_name(f);
                let code = ckr_name(rv);
                match rv {
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
                    | RvError::CryptokiNotInitialized => TokenError::Unavailable { function, code },
                    _ => TokenError::Pkcs11 {
                        context,
                        function,
                        code,
                        rv,
                    },
                }
            }
            other => TokenError::Other {
                context,
                source: other,
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
}
