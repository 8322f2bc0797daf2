//! TLS for the API server (rustls): the server's certificate chain and key
//! and, with `[server] client_ca`, client certificates (decision 0022).
//!
//! Client certificates are asked for but optional, so bearer-only clients
//! keep working on the same listener; a certificate that is presented must
//! chain to a `client_ca` certificate (and, with `client_crls`, not be
//! revoked), or the handshake fails. [`ClientCertAcceptor`] puts the
//! verified certificate of a connection into every request on it
//! ([`PeerCertificate`]), where `auth.rs` matches it against the clients'
//! bindings; nothing a client sends can put it there.

use super::ServeError;
use super::auth::PeerCertificate;
use crate::config::TlsFiles;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// A TLS setup failure about `files`.
fn setup_error(files: String) -> impl Fn(String) -> ServeError {
    move |message| ServeError::Tls {
        files: files.clone(),
        source: io::Error::other(message),
    }
}

/// The rustls configuration for `files`: HTTP/2 and HTTP/1.1 by ALPN, client
/// certificates verified against `client_ca` when it is set.
pub(super) fn server_config(files: &TlsFiles) -> Result<RustlsConfig, ServeError> {
    let fail = setup_error(format!(
        "{} / {}",
        files.cert.display(),
        files.key.display()
    ));
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(format!("reading the certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail("no PEM certificate in tls_cert".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail(format!("reading the private key: {e}")))?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &files.client_crls)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// Verifies client certificates against the CA certificates in `ca`,
/// allowing clients without one (bearer tokens). With CRLs, the client
/// certificate itself is checked against its issuer's CRL, which must be
/// among them (unknown status is refused); a CRL past its nextUpdate still
/// counts, as the files are read once, at start.
fn client_verifier(
    ca: &Path,
    crl_files: &[std::path::PathBuf],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServeError> {
    let fail = setup_error(format!("client_ca {}", ca.display()));
    let certs = match CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
    {
        Ok(certs) => certs,
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut roots = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            return Err(fail(format!("not a usable CA certificate: {e}")));
        }
    }
    if roots.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    for file in crl_files {
        let file_crls = read_crls(file)?;
        // rustls parses CRLs when it builds the verifier: file by file
        // first, so an error names its file.
        WebPkiClientVerifier::builder(Arc::clone(&roots))
            .with_crls(file_crls.iter().cloned())
            .build()
            .map_err(|e| setup_error(format!("client_crls {}", file.display()))(e.to_string()))?;
        crls.extend(file_crls);
    }
    let mut builder = WebPkiClientVerifier::builder(roots).allow_unauthenticated();
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    builder
        .build()
        .map_err(|e| fail(format!("client certificate verifier: {e}")))
}

/// The CRLs in a PEM file, or the one CRL of a DER file.
fn read_crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ServeError> {
    let fail = setup_error(format!("client_crls {}", file.display()));
    let bytes = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if crls.is_empty() {
        return Err(fail("no PEM X509 CRL in the file".into()));
    }
    Ok(crls)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// axum-server's rustls acceptor, and then the verified client certificate
/// of the connection (if one was presented) for its requests.
#[derive(Clone)]
pub(super) struct ClientCertAcceptor {
    inner: RustlsAcceptor,
}

impl ClientCertAcceptor {
    pub(super) fn new(inner: RustlsAcceptor) -> Self {
        Self { inner }
    }
}

impl<I, S> Accept<I, S> for ClientCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = WithPeer<S>;
    type Future = BoxFuture<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (tls, service) = handshake.await?;
            // rustls hands out a chain only once it verified it, end entity
            // first.
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Arc::new(PeerCertificate::from_der(cert)));
            Ok((
                tls,
                WithPeer {
                    inner: service,
                    peer,
                },
            ))
        })
    }
}

/// A connection's service that puts the connection's client certificate
/// into each request.
#[derive(Clone)]
pub(super) struct WithPeer<S> {
    inner: S,
    peer: Option<Arc<PeerCertificate>>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        // Requests arrive from hyper with no extensions; be sure anyway.
        req.extensions_mut().remove::<Arc<PeerCertificate>>();
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(Arc::clone(peer));
        }
        self.inner.call(req)
    }
}
