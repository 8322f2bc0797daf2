//! `orgkey serve`: open store and token, start sealed (or ignite from a
//! file for unattended starts), serve the API until SIGINT/SIGTERM, seal.

use super::{ServiceError, TokenIgniter, open_store, open_token};
use crate::api::{
    ApiState, Backoff, ConnectionLimits, IgniteError, Igniter, Listener, SealState, TokenFacts,
    UserPolicy,
};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::{AuditEvent, AuditWriter, NodeRole};
use crate::task::TaskFailed;
use secrecy::SecretString;
use std::sync::{Arc, RwLock};

/// How to serve.
pub struct ServeOptions {
    /// Ignite at start with this passphrase (unattended start).
    pub ignition_passphrase: Option<SecretString>,
    /// Allow plaintext HTTP on a non-loopback address.
    pub insecure_plaintext: bool,
    /// Override the configured listen address.
    pub listen: Option<std::net::SocketAddr>,
}

/// The shutdown signals, registered when this is called: a SIGTERM or
/// SIGINT that arrives any time after (even before the first poll, e.g.
/// right after `READY=1`) starts a graceful shutdown instead of the default
/// action, which would end the process without sealing the token.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ServiceError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(ServiceError::io("registering the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(ServiceError::io("registering the SIGINT handler"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

/// Runs the appliance until a shutdown signal.
pub async fn serve(
    cfg: Config,
    opts: ServeOptions,
    clock: Arc<dyn Clock>,
) -> Result<(), ServiceError> {
    // Before any secret is read: nothing of this process may reach a core
    // file or another process's debugger.
    super::harden::disable_core_dumps()?;
    let addr = opts.listen.unwrap_or(cfg.server.listen);
    if cfg.server.tls.is_none() && !addr.ip().is_loopback() && !opts.insecure_plaintext {
        return Err(ServiceError::Refused(format!(
            "refusing to serve plaintext HTTP on the non-loopback address {addr}: bearer tokens and the \
             ignition passphrase would cross the network in the clear. Configure [server] tls_cert and \
             tls_key, listen on 127.0.0.1, or pass --insecure-plaintext if a TLS proxy sits in front"
        )));
    }
    // Bound before anything is opened or ignited: a taken address fails
    // the start at once.
    let metrics_socket = cfg.metrics.listen.map(bind_metrics).transpose()?;
    let store = open_store(&cfg, Arc::clone(&clock)).await?;
    let token_cfg = cfg.clone();
    let token = tokio::task::spawn_blocking(move || open_token(&token_cfg))
        .await
        .map_err(TaskFailed::doing("opening the token"))??;
    let token = Arc::new(token);
    let d = token.description().clone();
    tracing::info!(label = %d.label, serial = %d.serial, profile = %cfg.token.profile.name, "token found");
    if !cfg.token.profile.quirks.pin_lockout {
        tracing::info!(
            "this token never locks the ignition passphrase; orgkey's ignition back-off is the only brake on guessing"
        );
    }
    let audit = AuditWriter::spawn(store.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // The leader lease, under which the singleton jobs run. It has a stop
    // of its own, given after the jobs stopped: a batch that is finishing
    // at shutdown still holds the lease.
    let (lease_stop_tx, lease_stop_rx) = tokio::sync::watch::channel(false);
    let (role_tx, role) = tokio::sync::watch::channel(NodeRole::Follower);
    let igniter: Arc<dyn Igniter> = Arc::new(TokenIgniter::new(
        Arc::clone(&token),
        store.clone(),
        tokio::runtime::Handle::current(),
        cfg.token.relogin,
    ));
    let state = Arc::new(ApiState {
        store: store.clone(),
        audit: audit.clone(),
        clients: crate::api::ClientDirectory::spawn(store.clone()),
        issuance: crate::ca::IssuanceCommits::spawn(store.clone()),
        clock,
        igniter: Arc::clone(&igniter),
        seal: RwLock::new(SealState::Sealed),
        backoff: tokio::sync::Mutex::new(Backoff::default()),
        ignition: cfg.ignition,
        max_body: cfg.server.max_body,
        body_timeout: cfg.server.body_timeout,
        token: TokenFacts {
            label: d.label,
            serial: d.serial,
            profile: cfg.token.profile.name.clone(),
        },
        users: UserPolicy {
            domains: cfg.domains.clone(),
            certification_validity: cfg.certification_validity,
        },
        maintenance: RwLock::new(None),
        x509: cfg.x509.clone(),
        backup: RwLock::new(None),
        limiter: crate::api::RateLimiter::new(cfg.rate_limits.clone()),
        deadline: cfg.token.deadline,
        token_down: std::sync::atomic::AtomicBool::new(false),
        token_event: tokio::sync::Notify::new(),
        metrics_on_api: cfg.metrics.listen.is_none(),
        role: role.clone(),
    });

    // Only an ignited node with an org key can run the singleton jobs, so
    // only such a node takes (or keeps) the lease.
    let eligible = {
        let state = Arc::clone(&state);
        move || matches!(state.seal_state(), SealState::Ignited(Some(_)))
    };
    let lease = tokio::spawn(super::cluster::hold_lease(
        store.clone(),
        cfg.node_id.clone(),
        cfg.cluster.lease_ttl,
        eligible,
        role_tx,
        lease_stop_rx,
    ));

    if let Some(pass) = opts.ignition_passphrase {
        tracing::warn!(
            "unattended start: igniting from a passphrase file. Anyone who can read that file can \
             use the org key; prefer interactive ignition"
        );
        let ig = Arc::clone(&igniter);
        let res = tokio::task::spawn_blocking(move || ig.ignite(&pass))
            .await
            .map_err(TaskFailed::doing("igniting"))?;
        match res {
            Ok(key) => {
                let mut ev = AuditEvent::new("appliance", "ignition", "ok")
                    .detail("unattended start from a passphrase file");
                if let Some(k) = &key {
                    ev = ev.key(k.org.fingerprint());
                }
                audit.append(ev).await?;
                state.set_seal_state(SealState::Ignited(key));
                tracing::info!("appliance ignited");
            }
            Err(e) => {
                audit
                    .append(
                        AuditEvent::new("appliance", "ignition", "denied")
                            .detail(format!("unattended start: {e}")),
                    )
                    .await?;
                return Err(ServiceError::Ignition(e));
            }
        }
    } else {
        tracing::info!("appliance is SEALED: ignite it with `orgkey ignite` or POST /v1/ignition");
    }

    let listener = Listener {
        addr,
        tls: cfg.server.tls.clone(),
        limits: ConnectionLimits {
            header_read_timeout: cfg.server.header_read_timeout,
            idle_timeout: cfg.server.idle_timeout,
            max_connections: super::harden::fit_connections_to_fd_limit(cfg.server.max_connections),
        },
    };
    let stop_on_signal = Arc::clone(&stop_tx);
    let scheduler = tokio::spawn(super::maintenance::schedule(
        Arc::clone(&state),
        super::maintenance::maintenance_for(&cfg, store.clone(), Arc::clone(&state.clock)),
        role.clone(),
        stop_rx,
    ));
    let recovery = tokio::spawn(recover_token(
        Arc::clone(&state),
        cfg.token.relogin,
        stop_tx.subscribe(),
    ));
    let backups = tokio::spawn(super::backup::schedule_state_backups(
        cfg.clone(),
        Arc::clone(&state),
        role,
        stop_tx.subscribe(),
    ));
    let metrics = metrics_socket.map(|socket| {
        spawn_metrics_listener(
            Arc::clone(&state),
            socket,
            listener.limits,
            stop_tx.subscribe(),
        )
    });
    let signalled = shutdown_signal()?;
    let shutdown = async move {
        signalled.await;
        super::systemd::notify("STOPPING=1");
        let _ = stop_on_signal.send(true);
    };
    let result = crate::api::serve(
        Arc::clone(&state),
        listener,
        |addr, tls| {
            let scheme = if tls { "https" } else { "http" };
            tracing::info!(%addr, "listening");
            // A plain line on stdout for scripts and tests that start on port 0.
            println!("orgkey listening on {scheme}://{addr}");
            // Ready for a service manager once the socket accepts: sealed
            // or ignited, the API answers (ignition is an operator's step).
            super::systemd::notify(&format!("READY=1\nSTATUS=listening on {scheme}://{addr}"));
        },
        shutdown,
    )
    .await;
    // Also when the server failed on its own: a running batch finishes
    // (each is one transaction), then the scheduler stops.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), backups).await;
    if let Some(m) = metrics {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), m).await;
    }
    recovery.abort();
    if tokio::time::timeout(std::time::Duration::from_secs(30), scheduler)
        .await
        .is_err()
    {
        tracing::warn!("maintenance did not stop within 30 s; abandoning the run");
    }
    // After the singleton jobs: the lease is given up for the next leader.
    let _ = lease_stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), lease).await;
    state.set_seal_state(SealState::Sealed);
    let ig = Arc::clone(&igniter);
    let _ = tokio::task::spawn_blocking(move || ig.seal()).await;
    store.close().await;
    result.map_err(ServiceError::from)
}

/// Binds `[metrics] listen`.
fn bind_metrics(
    addr: std::net::SocketAddr,
) -> Result<(std::net::TcpListener, std::net::SocketAddr), ServiceError> {
    let socket = std::net::TcpListener::bind(addr)
        .map_err(ServiceError::io(format!("binding [metrics] listen {addr}")))?;
    let bound = socket
        .local_addr()
        .map_err(ServiceError::io("reading the metrics listener's address"))?;
    Ok((socket, bound))
}

/// Serves `/metrics` on the bound `[metrics] listen` socket until `stop`.
/// The address is announced on stdout before the API's own line (scripts
/// and tests read up to that one), so a port 0 can be found.
fn spawn_metrics_listener(
    state: Arc<ApiState>,
    (socket, bound): (std::net::TcpListener, std::net::SocketAddr),
    limits: ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(addr = %bound, "metrics listening");
    println!("orgkey metrics on http://{bound}/metrics");
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        if let Err(e) = crate::api::serve_metrics(state, socket, limits, stopped).await {
            tracing::error!(error = %e, "the metrics listener failed; /metrics is not served");
        }
    })
}

/// Waits for the token to be marked lost, then re-initializes the module and
/// logs in again with the held passphrase until it works (relogin), or seals
/// the appliance (relogin off, sealed meanwhile, or the held passphrase
/// refused). Requests get 503 meanwhile.
///
/// Each attempt holds the ignition lock, so recovery takes turns with
/// ignition and seal, and it marks the appliance ignited only if no seal
/// landed while it was logging in.
async fn recover_token(
    state: Arc<ApiState>,
    relogin: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::time::Duration;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = state.token_event.notified() => {}
        }
        let mut delay = Duration::from_millis(200);
        while state.is_token_down() && !*stop.borrow() {
            let lock = state.backoff.lock().await;
            if !state.is_token_down() {
                break;
            }
            if !relogin || matches!(state.seal_state(), SealState::Sealed) {
                let why = if relogin {
                    "device or link lost while sealed: the appliance stays sealed until ignited again"
                } else {
                    "device or link lost; relogin is off: the appliance is sealed until ignited again"
                };
                seal_after_loss(&state, why).await;
                drop(lock);
                tracing::warn!("{why}");
                break;
            }
            drop(lock);
            tokio::time::sleep(delay).await;
            let lock = state.backoff.lock().await;
            if matches!(state.seal_state(), SealState::Sealed) {
                // Sealed while we slept: the seal stands; the next round
                // logs out and clears the token state.
                drop(lock);
                continue;
            }
            let ig = Arc::clone(&state.igniter);
            let attempt = tokio::task::spawn_blocking(move || ig.recover());
            match tokio::time::timeout(state.deadline, attempt).await {
                Ok(Ok(Ok(key))) => {
                    if state.ignite_unless_sealed(key) {
                        state
                            .token_down
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                        let _ = state
                            .audit
                            .append(AuditEvent::new("appliance", "token-recovered", "ok"))
                            .await;
                        tracing::info!("token recovered: module initialized again and logged in");
                    } else {
                        seal_after_loss(&state, "sealed while the token was recovering").await;
                    }
                }
                Ok(Ok(Err(e @ (IgniteError::BadPassphrase | IgniteError::Locked)))) => {
                    // The held passphrase no longer opens the token (changed
                    // elsewhere, or the PIN locked): never retry it.
                    let why = format!(
                        "relogin refused ({e}); the held passphrase was dropped and the appliance \
                         is sealed until ignited again"
                    );
                    seal_after_loss(&state, &why).await;
                    tracing::error!("{why}");
                }
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "token still unavailable; retrying");
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "recovery task failed");
                    delay = Duration::from_secs(1);
                }
                Err(_) => {
                    tracing::warn!(deadline = ?state.deadline, "token recovery did not finish in time; retrying");
                    delay = Duration::from_secs(1);
                }
            }
            drop(lock);
        }
    }
}

/// Seals after a token loss: sealed in memory, logged out of the token (as
/// far as a lost token allows, within the deadline), the held passphrase
/// dropped, the loss no longer pending, and an audit row saying why.
async fn seal_after_loss(state: &ApiState, why: &str) {
    state.set_seal_state(SealState::Sealed);
    let ig = Arc::clone(&state.igniter);
    let logout = tokio::task::spawn_blocking(move || ig.seal());
    match tokio::time::timeout(state.deadline, logout).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "logout after the token loss failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "logout task failed"),
        Err(_) => tracing::warn!("logout after the token loss did not finish in time"),
    }
    state
        .token_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = state
        .audit
        .append(AuditEvent::new("appliance", "token-lost", "sealed").detail(why))
        .await;
}
