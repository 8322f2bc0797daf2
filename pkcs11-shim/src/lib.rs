//! A PKCS#11 module for tests only: it loads the real module named by
//! `ORGKEY_SHIM_MODULE` (default SoftHSM2), hands out its function list
//! with C_Login and C_Sign wrapped, and misbehaves on a schedule read from
//! the environment when the module is first loaded:
//!
//! - `ORGKEY_SHIM_LOGIN=locked`: every C_Login answers CKR_PIN_LOCKED.
//! - `ORGKEY_SHIM_FLIP_EVERY=N`: every Nth signature comes back with one bit
//!   flipped (a faulty token).
//! - `ORGKEY_SHIM_FAIL_EVERY=N`: every Nth C_Sign fails with
//!   CKR_DEVICE_ERROR (a rare device error).
//! - `ORGKEY_SHIM_DELAY_MS=N`: every C_Sign first sleeps N ms.
//! - `ORGKEY_SHIM_LOGIN_LOG=FILE`: every C_Login appends `start` to FILE
//!   when it begins and a line with its return value (decimal CK_RV) when it
//!   ends, so tests can count attempts and see one in progress.
//! - `ORGKEY_SHIM_LOGIN_DELAY_MS=N`: every C_Login first sleeps N ms.
//! - `ORGKEY_SHIM_REJECT_WRAP_WITH_TRUSTED=1`: C_GenerateKeyPair,
//!   C_CreateObject and C_UnwrapKey answer CKR_ATTRIBUTE_TYPE_INVALID when a
//!   template carries CKA_WRAP_WITH_TRUSTED, as the YubiHSM 2 module does
//!   (hsm-profiles/yubihsm2.toml).

#![allow(non_snake_case)]

use cryptoki_sys::*;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Shim {
    _lib: libloading::Library,
    real: CK_FUNCTION_LIST,
    ours: CK_FUNCTION_LIST,
    login_locked: bool,
    flip_every: u64,
    fail_every: u64,
    delay_ms: u64,
    login_log: Option<std::path::PathBuf>,
    login_delay_ms: u64,
    reject_wrap_with_trusted: bool,
    signs: AtomicU64,
}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn load() -> Result<Shim, String> {
    let path = std::env::var("ORGKEY_SHIM_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    // SAFETY: loading a PKCS#11 module; its initializers are what a PKCS#11
    // application expects to run.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| e.to_string())?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let rv = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            lib.get(b"C_GetFunctionList").map_err(|e| e.to_string())?;
        get(&mut list)
    };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("C_GetFunctionList returned {rv}"));
    }
    // SAFETY: the module returned a valid, static function list.
    let real = unsafe { *list };
    let mut ours = real;
    ours.C_GetFunctionList = Some(C_GetFunctionList);
    ours.C_Login = Some(shim_login);
    ours.C_Sign = Some(shim_sign);
    ours.C_GenerateKeyPair = Some(shim_generate_key_pair);
    ours.C_CreateObject = Some(shim_create_object);
    ours.C_UnwrapKey = Some(shim_unwrap_key);
    Ok(Shim {
        _lib: lib,
        real,
        ours,
        login_locked: std::env::var("ORGKEY_SHIM_LOGIN").as_deref() == Ok("locked"),
        flip_every: env_u64("ORGKEY_SHIM_FLIP_EVERY"),
        fail_every: env_u64("ORGKEY_SHIM_FAIL_EVERY"),
        delay_ms: env_u64("ORGKEY_SHIM_DELAY_MS"),
        login_log: std::env::var_os("ORGKEY_SHIM_LOGIN_LOG").map(Into::into),
        login_delay_ms: env_u64("ORGKEY_SHIM_LOGIN_DELAY_MS"),
        reject_wrap_with_trusted: env_u64("ORGKEY_SHIM_REJECT_WRAP_WITH_TRUSTED") == 1,
        signs: AtomicU64::new(0),
    })
}

fn shim() -> Option<&'static Shim> {
    SHIM.get_or_init(load).as_ref().ok()
}

unsafe extern "C" fn shim_login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    log_login(s, "start");
    if s.login_delay_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(s.login_delay_ms));
    }
    let rv = if s.login_locked {
        CKR_PIN_LOCKED
    } else {
        match s.real.C_Login {
            // SAFETY: forwarding the caller's arguments unchanged.
            Some(f) => unsafe { f(session, user, pin, len) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
    log_login(s, &rv.to_string());
    rv
}

fn log_login(s: &Shim, line: &str) {
    if let Some(path) = &s.login_log {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

unsafe extern "C" fn shim_sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(f) = s.real.C_Sign else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // Only the call that produces the signature counts (not the length query).
    if sig.is_null() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { f(session, data, data_len, sig, sig_len) };
    }
    let n = s.signs.fetch_add(1, Ordering::SeqCst) + 1;
    if s.delay_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(s.delay_ms));
    }
    if s.fail_every > 0 && n % s.fail_every == 0 {
        return CKR_DEVICE_ERROR;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let rv = unsafe { f(session, data, data_len, sig, sig_len) };
    if rv == CKR_OK && s.flip_every > 0 && n % s.flip_every == 0 && !sig_len.is_null() {
        // SAFETY: the module wrote *sig_len bytes to sig.
        unsafe {
            let len = *sig_len as usize;
            if len > 0 {
                *sig.add(len / 2) ^= 0x01;
            }
        }
    }
    rv
}

/// Whether the shim refuses this template: it carries CKA_WRAP_WITH_TRUSTED
/// and the shim plays a token that does not know the attribute.
///
/// # Safety
/// `template` points to `count` attributes (or is null with `count` 0), as
/// PKCS#11 requires of the caller.
unsafe fn refused(s: &Shim, template: *const CK_ATTRIBUTE, count: CK_ULONG) -> bool {
    if !s.reject_wrap_with_trusted || template.is_null() {
        return false;
    }
    // SAFETY: see the function's contract.
    let attrs = unsafe { std::slice::from_raw_parts(template, count as usize) };
    attrs.iter().any(|a| a.type_ == CKA_WRAP_WITH_TRUSTED)
}

unsafe extern "C" fn shim_generate_key_pair(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    public: *mut CK_ATTRIBUTE,
    public_count: CK_ULONG,
    private: *mut CK_ATTRIBUTE,
    private_count: CK_ULONG,
    public_handle: *mut CK_OBJECT_HANDLE,
    private_handle: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's templates, as PKCS#11 requires them.
    if unsafe { refused(s, public, public_count) || refused(s, private, private_count) } {
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    match s.real.C_GenerateKeyPair {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe {
            f(
                session,
                mechanism,
                public,
                public_count,
                private,
                private_count,
                public_handle,
                private_handle,
            )
        },
        None => CKR_FUNCTION_NOT_SUPPORTED,
    }
}

unsafe extern "C" fn shim_create_object(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    handle: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's template, as PKCS#11 requires it.
    if unsafe { refused(s, template, count) } {
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    match s.real.C_CreateObject {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(session, template, count, handle) },
        None => CKR_FUNCTION_NOT_SUPPORTED,
    }
}

unsafe extern "C" fn shim_unwrap_key(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    unwrapping_key: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    handle: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: the caller's template, as PKCS#11 requires it.
    if unsafe { refused(s, template, count) } {
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    match s.real.C_UnwrapKey {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe {
            f(
                session,
                mechanism,
                unwrapping_key,
                wrapped,
                wrapped_len,
                template,
                count,
                handle,
            )
        },
        None => CKR_FUNCTION_NOT_SUPPORTED,
    }
}

/// The module's entry point.
///
/// # Safety
/// `list` must be a valid pointer, as PKCS#11 requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match shim() {
        Some(s) => {
            // SAFETY: the list lives in a static for the life of the process;
            // PKCS#11 callers only read through this pointer.
            unsafe { *list = &s.ours as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
            CKR_OK
        }
        None => CKR_GENERAL_ERROR,
    }
}
