//! RFC 7512 `pkcs11:` URIs naming a token (and optionally its module).
//!
//! Only the attributes that select a token or a module are accepted. Object
//! attributes (`object`, `id`, `type`) are refused because orgkey finds its own
//! objects, and `pin-value` is refused because secrets never live in config.

use super::ConfigError;
use percent_encoding::percent_decode_str;

/// What a `pkcs11:` URI says about the token and module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=` (CK_TOKEN_INFO label)
    pub token: Option<String>,
    /// `serial=`
    pub serial: Option<String>,
    /// `manufacturer=`
    pub manufacturer: Option<String>,
    /// `model=`
    pub model: Option<String>,
    /// `module-path=` query attribute
    pub module_path: Option<String>,
    /// `module-name=` query attribute
    pub module_name: Option<String>,
}

fn decode(attr: &str, v: &str) -> Result<String, ConfigError> {
    percent_decode_str(v)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConfigError::Pkcs11Uri(format!("attribute {attr} is not valid UTF-8")))
}

fn set(slot: &mut Option<String>, attr: &str, v: &str) -> Result<(), ConfigError> {
    if slot.is_some() {
        return Err(ConfigError::Pkcs11Uri(format!(
            "attribute {attr} given twice"
        )));
    }
    *slot = Some(decode(attr, v)?);
    Ok(())
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let rest = s
            .strip_prefix("pkcs11:")
            .ok_or_else(|| ConfigError::Pkcs11Uri("must start with \"pkcs11:\"".into()))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| {
                ConfigError::Pkcs11Uri(format!("path attribute {attr:?} has no '='"))
            })?;
            match k {
                "token" => set(&mut uri.token, k, v)?,
                "serial" => set(&mut uri.serial, k, v)?,
                "manufacturer" => set(&mut uri.manufacturer, k, v)?,
                "model" => set(&mut uri.model, k, v)?,
                // Library attributes only narrow down the module; accepted and ignored.
                "library-manufacturer" | "library-description" | "library-version" => {}
                "slot-id" | "slot-description" | "slot-manufacturer" => {
                    return Err(ConfigError::Pkcs11Uri(format!(
                        "{k} is not accepted: slots are renumbered by some tokens, select the token by label or serial"
                    )));
                }
                "object" | "id" | "type" => {
                    return Err(ConfigError::Pkcs11Uri(format!(
                        "{k} is not accepted: the URI names the token, orgkey finds its own objects"
                    )));
                }
                other => {
                    return Err(ConfigError::Pkcs11Uri(format!(
                        "unknown path attribute {other:?}"
                    )));
                }
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| {
                ConfigError::Pkcs11Uri(format!("query attribute {attr:?} has no '='"))
            })?;
            match k {
                "module-path" => set(&mut uri.module_path, k, v)?,
                "module-name" => set(&mut uri.module_name, k, v)?,
                "pin-value" | "pin-source" => {
                    return Err(ConfigError::Pkcs11Uri(
                        "PINs are not accepted in the URI: the ignition passphrase is entered at ignition".into(),
                    ));
                }
                other => {
                    return Err(ConfigError::Pkcs11Uri(format!(
                        "unknown query attribute {other:?}"
                    )));
                }
            }
        }
        if uri.token.is_none() && uri.serial.is_none() {
            return Err(ConfigError::Pkcs11Uri(
                "the URI must name the token by token= or serial=".into(),
            ));
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_serial_and_module_path() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=Org%20Key;serial=0a1b2c;manufacturer=SoftHSM%20project?module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("Org Key"));
        assert_eq!(u.serial.as_deref(), Some("0a1b2c"));
        assert_eq!(u.manufacturer.as_deref(), Some("SoftHSM project"));
        assert_eq!(
            u.module_path.as_deref(),
            Some("/usr/lib/softhsm/libsofthsm2.so")
        );
    }

    #[test]
    fn refuses_pins_slots_objects_and_unknowns() {
        for bad in [
            "pkcs11:token=a?pin-value=1234",
            "pkcs11:token=a;slot-id=3",
            "pkcs11:token=a;object=key",
            "pkcs11:token=a;color=blue",
            "pkcs11:token=a;token=b",
            "pkcs11:manufacturer=x",
            "pkcs:token=a",
            "pkcs11:token",
            "pkcs11:token=%FF",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
