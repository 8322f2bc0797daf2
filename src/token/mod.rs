//! The token layer: the only code that talks PKCS#11 (through cryptoki).
//!
//! It loads the module an HSM profile names, finds the token by label or
//! serial (never by slot number, which some tokens renumber), keeps a pool of
//! sessions for concurrent signing, logs in at ignition, generates org key
//! pairs from strict templates and signs digests. Every call blocks: callers
//! run it on a blocking thread and never hold a session across an `.await`.

mod ceremony;
mod check;
mod error;
mod keys;

pub use ceremony::{UnwrapSpec, WrappedKey};
pub use check::{KeyObjectReport, KeyRole};
pub use error::{Pkcs11Cause, TokenError};
pub use keys::{KeyKind, KeySpec, KeyUsage, TokenDecrypter, TokenKey, TokenSigner};

use crate::config::TokenSelector;
use crate::config::profile::Ed25519Params;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use error::CkResultExt;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// What the token says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDescription {
    /// CK_TOKEN_INFO label (trimmed).
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
}

/// Options that come from config and the HSM profile.
#[derive(Debug, Clone, Copy)]
pub struct TokenOptions {
    /// Most sessions kept open for concurrent operations.
    pub max_sessions: usize,
    /// CKA_EC_PARAMS encoding of Ed25519 on this token.
    pub ed25519_params: Ed25519Params,
    /// Whether key templates may carry CKA_WRAP_WITH_TRUSTED (the profile's
    /// `[keys] wrap_with_trusted`).
    pub wrap_with_trusted: bool,
    /// Longest a call waits for a pooled session when all are in use
    /// (`[token] deadline`); then it fails with [`TokenError::Busy`], which
    /// counts as the token being unavailable.
    pub session_wait: Duration,
}

/// An open PKCS#11 token.
pub struct Token {
    ctx: Pkcs11,
    /// The slot can change when the module is initialized again.
    slot: Mutex<Slot>,
    selector: TokenSelector,
    description: TokenDescription,
    options: TokenOptions,
    pool: SessionPool<Session>,
    /// Token calls hold this for reading; [`Token::reconnect`] takes it for
    /// writing, because C_Finalize must not run while other threads are
    /// inside the module (p11-kit's client deadlocks then).
    gate: RwLock<()>,
    /// A session kept open while logged in: PKCS#11 logs the user out when
    /// the application's last session closes, so ignition must not depend on
    /// pool sessions staying open.
    login_session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("description", &self.description)
            .field("slot", &self.slot().id())
            .finish_non_exhaustive()
    }
}

struct PoolState<S> {
    idle: Vec<S>,
    /// Sessions checked out or idle, plus slots reserved for sessions being
    /// opened.
    open: usize,
    /// Bumped by [`Token::reconnect`]: sessions of an older generation died
    /// with the old module state and are not returned to the pool.
    generation: u64,
}

/// At most `max` sessions, handed out one call at a time. Generic over the
/// session type so that its bookkeeping is tested without a token.
struct SessionPool<S> {
    state: Mutex<PoolState<S>>,
    returned: Condvar,
    max: usize,
    /// Longest [`SessionPool::checkout`] waits for a free session.
    wait: Duration,
}

impl<S> SessionPool<S> {
    fn new(max: usize, wait: Duration) -> Self {
        SessionPool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                generation: 0,
            }),
            returned: Condvar::new(),
            max: max.max(1),
            wait,
        }
    }

    /// An idle session, or a slot for a new one, waiting up to `wait` for
    /// one to come back when all are in use. The guard gives it back.
    fn checkout(&self) -> Result<Pooled<'_, S>, TokenError> {
        let until = Instant::now() + self.wait;
        let mut st = lock(&self.state);
        loop {
            let generation = st.generation;
            if let Some(s) = st.idle.pop() {
                return Ok(Pooled::new(self, Some(s), generation));
            }
            if st.open < self.max {
                st.open += 1;
                return Ok(Pooled::new(self, None, generation));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TokenError::Busy {
                    waited: self.wait,
                    sessions: self.max,
                });
            }
            st = self
                .returned
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Closes the idle sessions (checked-out ones come back as usual).
    fn close_idle(&self) {
        let idle = {
            let mut st = lock(&self.state);
            st.open = st.open.saturating_sub(st.idle.len());
            std::mem::take(&mut st.idle)
        };
        drop(idle);
        self.returned.notify_all();
    }

    /// Starts a new generation after the module was finalized: idle sessions
    /// are dropped, checked-out ones are not taken back, every slot is free.
    fn new_generation(&self) {
        let idle = {
            let mut st = lock(&self.state);
            st.generation += 1;
            st.open = 0;
            std::mem::take(&mut st.idle)
        };
        drop(idle);
        self.returned.notify_all();
    }

    fn open(&self) -> usize {
        lock(&self.state).open
    }
}

/// A session checked out of the pool (or a slot for one not opened yet).
/// On drop, also when the call panicked, the session goes back to the pool,
/// or is closed when it was lost ([`Pooled::discard`]) or the call panicked
/// (it may be in the middle of an operation); either way its slot is free
/// again and a waiter is woken, like cryptoki's `Session` closes itself.
struct Pooled<'a, S> {
    pool: &'a SessionPool<S>,
    session: Option<S>,
    generation: u64,
    lost: bool,
    /// Held while the session is in use, and until it is back in the pool or
    /// closed: [`Token::reconnect`] must not finalize the module meanwhile.
    /// Dropped after [`Drop::drop`] ran (fields drop after it).
    gate: Option<RwLockReadGuard<'a, ()>>,
}

impl<'a, S> Pooled<'a, S> {
    fn new(pool: &'a SessionPool<S>, session: Option<S>, generation: u64) -> Self {
        Pooled {
            pool,
            session,
            generation,
            lost: false,
            gate: None,
        }
    }

    fn hold(&mut self, gate: RwLockReadGuard<'a, ()>) {
        self.gate = Some(gate);
    }

    /// The session, opened with `open` first if this is a fresh slot. If
    /// opening fails the slot is given back when the guard drops.
    fn session(&mut self, open: impl FnOnce() -> Result<S, TokenError>) -> Result<&S, TokenError> {
        match &mut self.session {
            Some(s) => Ok(s),
            empty => Ok(empty.insert(open()?)),
        }
    }

    /// The session was lost (device or session gone): close it, do not
    /// pool it.
    fn discard(&mut self) {
        self.lost = true;
    }
}

impl<S> Drop for Pooled<'_, S> {
    fn drop(&mut self) {
        let session = self.session.take();
        let keep = !self.lost && !std::thread::panicking();
        let mut st = lock(&self.pool.state);
        let close = if st.generation != self.generation {
            // The module was finalized and initialized again since: the
            // session died with it and its slot was freed then. Closing it
            // now could close a new session that got the same handle.
            std::mem::forget(session);
            None
        } else {
            match session {
                Some(s) if keep => {
                    st.idle.push(s);
                    None
                }
                other => {
                    st.open = st.open.saturating_sub(1);
                    other
                }
            }
        };
        drop(st);
        // C_CloseSession outside the pool lock, still inside the gate.
        drop(close);
        self.pool.returned.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a PKCS#11 module mapped until the process exits, however often it is
/// loaded and dropped.
///
/// Modules built on OpenSSL (Kryoptic, many vendor libraries) register
/// thread-exit destructors inside their own code. If the last handle is
/// dropped and the module unmapped, the next worker thread that had called
/// into it crashes when it exits (seen with Kryoptic: SIGSEGV in
/// `__nptl_deallocate_tsd`). One extra handle that is never closed prevents
/// that.
fn keep_module_loaded(module: &Path) -> Result<(), TokenError> {
    static KEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut kept = lock(&KEPT);
    if kept.iter().any(|p| p == module) {
        return Ok(());
    }
    // SAFETY: this runs the module's initializers, exactly as loading it
    // through cryptoki below does; nothing is called through this handle.
    let lib = unsafe { libloading::Library::new(module) }.map_err(|e| TokenError::Module {
        path: module.display().to_string(),
        source: Pkcs11Cause::new(cryptoki::error::Error::LibraryLoading(e)),
    })?;
    std::mem::forget(lib);
    kept.push(module.to_path_buf());
    Ok(())
}

fn load_module(module: &Path) -> Result<Pkcs11, TokenError> {
    keep_module_loaded(module)?;
    let ctx = Pkcs11::new(module).map_err(|e| TokenError::Module {
        path: module.display().to_string(),
        source: Pkcs11Cause::new(e),
    })?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| TokenError::Module {
            path: module.display().to_string(),
            source: Pkcs11Cause::new(e),
        })?;
    Ok(ctx)
}

fn describe(ctx: &Pkcs11, slot: Slot) -> Result<TokenDescription, TokenError> {
    let info = ctx.get_token_info(slot).ck("reading token info")?;
    Ok(TokenDescription {
        label: info.label().trim().to_string(),
        serial: info.serial_number().trim().to_string(),
        manufacturer: info.manufacturer_id().trim().to_string(),
        model: info.model().trim().to_string(),
    })
}

fn matches(sel: &TokenSelector, d: &TokenDescription) -> bool {
    sel.label.as_deref().is_none_or(|l| l == d.label)
        && sel.serial.as_deref().is_none_or(|s| s == d.serial)
        && sel
            .manufacturer
            .as_deref()
            .is_none_or(|m| m == d.manufacturer)
        && sel.model.as_deref().is_none_or(|m| m == d.model)
}

fn find_slot(ctx: &Pkcs11, sel: &TokenSelector) -> Result<(Slot, TokenDescription), TokenError> {
    let mut found = Vec::new();
    let mut present = Vec::new();
    for slot in ctx.get_slots_with_initialized_token().ck("listing slots")? {
        let d = describe(ctx, slot)?;
        present.push(format!("{:?} (serial {})", d.label, d.serial));
        if matches(sel, &d) {
            found.push((slot, d));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(TokenError::NotFound {
            selector: sel.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        }),
        n => Err(TokenError::Ambiguous {
            selector: sel.to_string(),
            count: n,
        }),
    }
}

/// Sets the environment variables a PKCS#11 module reads (SOFTHSM2_CONF,
/// P11_KIT_SERVER_ADDRESS, ...) before it is loaded.
///
/// # Safety
/// Must be called while the process has a single thread (before the async
/// runtime or any other thread starts), because it changes the environment.
pub unsafe fn set_module_environment<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) {
    for (k, v) in vars {
        // SAFETY: the caller guarantees that no other thread runs.
        unsafe { std::env::set_var(k, v) };
    }
}

/// C_Logout on `session`; not being logged in is fine.
fn end_login(session: &Session) -> Result<(), TokenError> {
    match session.logout() {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserNotLoggedIn, _)) => {
            Ok(())
        }
        Err(e) => Err(TokenError::from_ck("logging out (C_Logout)", e)),
    }
}

impl Token {
    /// Loads `module` and opens the token `selector` names.
    pub fn open(
        module: &Path,
        selector: &TokenSelector,
        options: TokenOptions,
    ) -> Result<Token, TokenError> {
        let ctx = load_module(module)?;
        let (slot, description) = find_slot(&ctx, selector)?;
        Ok(Token {
            ctx,
            slot: Mutex::new(slot),
            selector: selector.clone(),
            description,
            options,
            pool: SessionPool::new(options.max_sessions, options.session_wait),
            login_session: Mutex::new(None),
            gate: RwLock::new(()),
        })
    }

    /// Initializes a fresh token in the first free slot of `module` with
    /// label `label`, security officer PIN and user PIN (the ignition
    /// passphrase). Returns the new token's serial. This is what `orgkey init
    /// --create-token` does; on a real HSM tokens are set up with the
    /// vendor's tools instead.
    pub fn initialize_new_token(
        module: &Path,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<String, TokenError> {
        let ctx = load_module(module)?;
        let selector = TokenSelector {
            label: Some(label.to_string()),
            ..Default::default()
        };
        if find_slot(&ctx, &selector).is_ok() {
            return Err(TokenError::Unsupported(format!(
                "a token labelled {label:?} already exists; refusing to initialize another"
            )));
        }
        let mut free = None;
        for slot in ctx.get_all_slots().ck("listing slots")? {
            let info = ctx.get_token_info(slot);
            if let Ok(info) = info
                && !info.token_initialized()
            {
                free = Some(slot);
                break;
            }
        }
        let slot = free.ok_or_else(|| {
            TokenError::Unsupported("the module offers no slot with an uninitialized token".into())
        })?;
        ctx.init_token(slot, so_pin, label)
            .ck("initializing the token")?;
        // Some tokens (SoftHSM2) move the new token to another slot number.
        let (slot, d) = find_slot(&ctx, &selector)?;
        let session = ctx.open_rw_session(slot).ck("opening a session")?;
        session
            .login(UserType::So, Some(so_pin))
            .ck("security officer login")?;
        session
            .init_pin(user_pin)
            .ck("setting the ignition passphrase (C_InitPIN)")?;
        session.logout().ck("security officer logout")?;
        drop(session);
        let _ = ctx.finalize();
        Ok(d.serial)
    }

    /// What the token says about itself.
    pub fn description(&self) -> &TokenDescription {
        &self.description
    }

    /// Logs the user in with the ignition passphrase.
    ///
    /// This is always a real C_Login, so the passphrase is proven by the
    /// token every time: a login this process holds already is ended first
    /// (PKCS#11 answers a second C_Login with CKR_USER_ALREADY_LOGGED_IN
    /// without looking at the PIN). On error the token is left logged out.
    pub fn login(&self, passphrase: &SecretString) -> Result<(), TokenError> {
        let mut guard = lock(&self.login_session);
        if let Some(previous) = guard.take() {
            end_login(&previous)?;
        }
        let session = self
            .ctx
            .open_rw_session(self.slot())
            .ck("opening a session")?;
        let started = Instant::now();
        let login = session.login(UserType::User, Some(passphrase));
        crate::metrics::token_operation(crate::metrics::TokenOperation::Login, started.elapsed());
        match login {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {
                // Logged in through a session this Token does not know of
                // (another Token on the same module in this process): end
                // that login too, then prove the passphrase.
                end_login(&session)?;
                session
                    .login(UserType::User, Some(passphrase))
                    .map_err(|e| TokenError::from_ck("ignition (C_Login)", e))?;
            }
            Err(e) => return Err(TokenError::from_ck("ignition (C_Login)", e)),
        }
        *guard = Some(session);
        Ok(())
    }

    /// Logs out and closes idle sessions (seals the appliance).
    ///
    /// Ends the login even when this Token holds no login session of its
    /// own, so a seal never leaves the process logged in. The login state
    /// is forgotten even when C_Logout fails (a lost device): the next
    /// ignition proves the passphrase again either way.
    pub fn logout(&self) -> Result<(), TokenError> {
        let session = lock(&self.login_session).take();
        self.pool.close_idle();
        match session {
            Some(s) => end_login(&s),
            None => {
                let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
                let s = self
                    .ctx
                    .open_rw_session(self.slot())
                    .ck("opening a session to log out")?;
                end_login(&s)
            }
        }
    }

    /// Changes the ignition passphrase (C_SetPIN) from inside a process that
    /// may be logged in: on the login session when there is one (a user
    /// session), else on a fresh read/write public session. Either way the
    /// token checks `old` itself, and the process's login state is unchanged.
    pub fn set_user_pin(&self, old: &SecretString, new: &SecretString) -> Result<(), TokenError> {
        let guard = lock(&self.login_session);
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let fresh;
        let session = match guard.as_ref() {
            Some(s) => s,
            None => {
                fresh = self
                    .ctx
                    .open_rw_session(self.slot())
                    .ck("opening a session")?;
                &fresh
            }
        };
        session
            .set_pin(old, new)
            .map_err(|e| TokenError::from_ck("changing the ignition passphrase (C_SetPIN)", e))
    }

    /// Whether this process holds a login on the token.
    pub fn is_logged_in(&self) -> bool {
        lock(&self.login_session).is_some()
    }

    /// Runs `f` with a pooled session, waiting up to the options'
    /// `session_wait` for one ([`TokenError::Busy`] after that). A session
    /// that reports device or session loss, or whose call panicked, is closed
    /// instead of going back to the pool; its slot is free again either way.
    pub(crate) fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let mut pooled = self.pool.checkout()?;
        let _in_use = crate::metrics::token_session_in_use();
        // Only the module calls hold the gate, not the wait for a session.
        pooled.hold(self.gate.read().unwrap_or_else(|p| p.into_inner()));
        let session = pooled.session(|| {
            self.ctx
                .open_rw_session(self.slot())
                .ck("opening a session")
        })?;
        let result = f(session);
        if let Err(e) = &result
            && e.is_unavailable()
        {
            pooled.discard();
        }
        result
    }

    pub(crate) fn options(&self) -> TokenOptions {
        self.options
    }

    /// Sessions this process has open on the token (pool plus login).
    pub fn open_sessions(&self) -> usize {
        self.pool.open() + usize::from(self.is_logged_in())
    }

    pub(crate) fn slot(&self) -> Slot {
        *lock(&self.slot)
    }

    /// Recovers from device or link loss: drops every session, finalizes
    /// and initializes the module again, finds the token again (its slot may
    /// have changed) and logs in with `passphrase`. Object handles held
    /// before are invalid afterwards: callers load their keys again.
    pub fn reconnect(&self, passphrase: &SecretString) -> Result<(), TokenError> {
        // Waits for calls in flight; a dead link fails them quickly. A call
        // that still hangs after a while is stuck on the dead link for good:
        // re-initializing the module is what frees it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let _gate = loop {
            match self.gate.try_write() {
                Ok(g) => break Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => break Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!(
                            "token calls still hang on the lost link; initializing the module anyway"
                        );
                        break None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        self.pool.new_generation();
        drop(lock(&self.login_session).take());
        // C_Finalize takes down every session; an error just means there was
        // nothing left to finalize.
        let _ = self.ctx.clone().finalize();
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => return Err(TokenError::from_ck("initializing the module again", e)),
        }
        let (slot, _) = find_slot(&self.ctx, &self.selector)?;
        *lock(&self.slot) = slot;
        self.login(passphrase)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Close pool sessions before the login session so the logout is last.
        self.pool.close_idle();
        let _ = lock(&self.login_session).take();
        // The module stays mapped (keep_module_loaded): leave it
        // uninitialized so a later Token in this process starts afresh.
        let _ = self.ctx.clone().finalize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in session that counts how often one is closed (dropped).
    struct FakeSession {
        id: usize,
        closed: Arc<AtomicUsize>,
    }

    impl Drop for FakeSession {
        fn drop(&mut self) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Fixture {
        pool: SessionPool<FakeSession>,
        opened: AtomicUsize,
        closed: Arc<AtomicUsize>,
    }

    impl Fixture {
        fn new(max: usize, wait: Duration) -> Self {
            Fixture {
                pool: SessionPool::new(max, wait),
                opened: AtomicUsize::new(0),
                closed: Arc::new(AtomicUsize::new(0)),
            }
        }

        /// Checks a session out (opening one if needed) and returns its id.
        fn use_one(&self, f: impl FnOnce(usize)) -> Result<usize, TokenError> {
            let mut p = self.pool.checkout()?;
            let id = p
                .session(|| {
                    Ok(FakeSession {
                        id: self.opened.fetch_add(1, Ordering::SeqCst),
                        closed: Arc::clone(&self.closed),
                    })
                })?
                .id;
            f(id);
            Ok(id)
        }
    }

    #[test]
    fn sessions_are_reused() {
        let fx = Fixture::new(2, Duration::from_secs(1));
        assert_eq!(fx.use_one(|_| {}).unwrap(), 0);
        assert_eq!(fx.use_one(|_| {}).unwrap(), 0);
        assert_eq!(fx.pool.open(), 1);
        assert_eq!(fx.closed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_panic_in_the_call_gives_the_slot_back() {
        let fx = Fixture::new(1, Duration::from_millis(200));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fx.use_one(|_| panic!("the call panicked")).unwrap();
        }));
        assert!(r.is_err());
        // The session may be mid-operation: closed, not pooled; its slot is free.
        assert_eq!(fx.pool.open(), 0);
        assert_eq!(fx.closed.load(Ordering::SeqCst), 1);
        let started = Instant::now();
        assert_eq!(fx.use_one(|_| {}).unwrap(), 1, "a new session, at once");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_waiter_times_out_as_busy_when_every_session_stays_in_use() {
        let fx = Fixture::new(1, Duration::from_millis(150));
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let fx = &fx;
            s.spawn(move || {
                fx.use_one(|_| {
                    started_tx.send(()).unwrap();
                    let _ = hang.recv();
                })
                .unwrap();
            });
            started.recv().unwrap();
            let t = Instant::now();
            let e = fx.use_one(|_| {}).unwrap_err();
            assert!(t.elapsed() >= Duration::from_millis(150));
            assert!(matches!(e, TokenError::Busy { sessions: 1, .. }), "{e}");
            assert!(e.is_unavailable(), "a hung pool is a token in trouble");
            drop(release);
        });
        // The hung call came back: its session is pooled again.
        assert_eq!(fx.use_one(|_| {}).unwrap(), 0);
    }

    #[test]
    fn a_waiter_gets_the_session_that_comes_back() {
        let fx = Fixture::new(1, Duration::from_secs(10));
        let (started_tx, started) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                fx.use_one(|_| {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                })
                .unwrap();
            });
            started.recv().unwrap();
            let t = Instant::now();
            assert_eq!(fx.use_one(|_| {}).unwrap(), 0);
            assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");
        });
    }

    #[test]
    fn lost_sessions_are_closed_and_their_slot_freed() {
        let fx = Fixture::new(1, Duration::from_millis(100));
        {
            let mut p = fx.pool.checkout().unwrap();
            p.session(|| {
                Ok(FakeSession {
                    id: 7,
                    closed: Arc::clone(&fx.closed),
                })
            })
            .unwrap();
            p.discard();
        }
        assert_eq!(fx.closed.load(Ordering::SeqCst), 1);
        assert_eq!(fx.pool.open(), 0);
        // A failed open gives its slot back too.
        {
            let mut p = fx.pool.checkout().unwrap();
            let e = p
                .session(|| Err(TokenError::BadValue("no session".into())))
                .err();
            assert!(e.is_some());
        }
        assert_eq!(fx.pool.open(), 0);
        assert_eq!(fx.use_one(|_| {}).unwrap(), 0);
    }

    #[test]
    fn sessions_of_an_older_generation_are_not_pooled_or_closed() {
        let fx = Fixture::new(1, Duration::from_millis(100));
        let closed_before = fx.closed.load(Ordering::SeqCst);
        fx.use_one(|_| fx.pool.new_generation()).unwrap();
        // Not pooled, and not closed through the module either: its handle
        // may belong to a new session by now.
        assert_eq!(fx.closed.load(Ordering::SeqCst), closed_before);
        assert_eq!(fx.pool.open(), 0);
        assert_eq!(fx.use_one(|_| {}).unwrap(), 1);
        assert_eq!(fx.pool.open(), 1);
    }
}
