//! `GET /metrics` (Prometheus text format) and the per-request metrics of
//! every route: [`RequestMetrics`] counts each answered request under the
//! router's path template (`/v1/users/{email}`, never the raw path, so no
//! email or serial becomes a label) and its status code, and observes its
//! duration. No token is needed for `/metrics` (docs/decisions/0021): it
//! shows no secret, and `[metrics] listen` moves it off the API listener.

use super::shared::AppState;
use super::{ApiState, SealState};
use crate::metrics::{Snapshot, StoreFacts, UNMATCHED_ROUTE};
use axum::extract::{MatchedPath, State};
use axum::http::{Request, Response, header};
use axum::response::IntoResponse;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Longest a scrape waits for the store; after that the series read from
/// it are left out of the answer (and `orgkey_store_up` is 0).
const STORE_WAIT: Duration = Duration::from_secs(2);

/// `GET /metrics`.
pub(super) async fn metrics(State(st): AppState) -> impl IntoResponse {
    let snapshot = snapshot(&st).await;
    match crate::metrics::render(&snapshot) {
        Ok(text) => Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)),
        Err(e) => Err(super::shared::internal("rendering the metrics failed")(e)),
    }
}

/// The appliance's state now. Reads the store (bounded by [`STORE_WAIT`])
/// and the seal state; never the token, which may hang.
async fn snapshot(st: &ApiState) -> Snapshot {
    let store = match tokio::time::timeout(STORE_WAIT, store_facts(st)).await {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: reading the store failed");
            None
        }
        Err(_) => {
            tracing::warn!(wait = ?STORE_WAIT, "metrics: the store did not answer in time");
            None
        }
    };
    Snapshot {
        sealed: matches!(st.seal_state(), SealState::Sealed),
        token_up: !st.is_token_down(),
        leader: matches!(*st.role.borrow(), crate::store::NodeRole::Leader(_)),
        store,
    }
}

async fn store_facts(st: &ApiState) -> Result<StoreFacts, super::BoxError> {
    let now = st.clock.now();
    let unix = |t: std::time::SystemTime| crate::clock::unix_secs(t) as i64;
    let audit_rows = u64::try_from(st.store.audit_head().await?).unwrap_or(0);
    let org_key_expiry = match st.store.active_org_key().await? {
        Some(rec) => crate::openpgp::OrgKey::parse(rec.cert.as_bytes())?
            .expires(now)?
            .map(unix),
        None => None,
    };
    let org_cert_expiry = st.store.active_org_cert().await?.map(|c| c.not_after);
    let crl_next_update = st.store.earliest_crl_next_update(unix(now)).await?;
    Ok(StoreFacts {
        audit_rows,
        org_key_expiry,
        org_cert_expiry,
        crl_next_update,
    })
}

/// Most distinct route templates given a label of their own. The router
/// has a fixed set far below this; the cap only makes the bound explicit.
const MAX_ROUTES: usize = 128;

/// Route templates seen so far, each leaked once so that a label is a
/// `&'static str` and a request allocates nothing.
static ROUTES: LazyLock<RwLock<HashSet<&'static str>>> =
    LazyLock::new(|| RwLock::new(HashSet::new()));

/// The route label of a request: its path template, or
/// [`UNMATCHED_ROUTE`].
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let Some(path) = matched.map(MatchedPath::as_str) else {
        return UNMATCHED_ROUTE;
    };
    if let Some(known) = ROUTES.read().unwrap_or_else(|p| p.into_inner()).get(path) {
        return known;
    }
    let mut routes = ROUTES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = routes.get(path) {
        return known;
    }
    if routes.len() >= MAX_ROUTES {
        return UNMATCHED_ROUTE;
    }
    let label: &'static str = Box::leak(path.into());
    routes.insert(label);
    label
}

/// The layer that measures every request (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestMetrics;

impl<S> tower_layer::Layer<S> for RequestMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

/// A route's service, measured.
#[derive(Debug, Clone)]
pub(super) struct Measured<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<Request<B>> for Measured<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = route_label(req.extensions().get::<MatchedPath>());
        MeasuredFuture {
            inner: self.inner.call(req),
            route,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being handled; records it when its response is ready.
    pub(super) struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        route: &'static str,
        started: Instant,
    }
}

impl<F, R, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            crate::metrics::http_request(
                this.route,
                resp.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates_interned_once() {
        assert_eq!(route_label(None), UNMATCHED_ROUTE);
        let router: axum::Router = axum::Router::new().route(
            "/v1/users/{email}",
            axum::routing::get(|p: MatchedPath| async move {
                let a = route_label(Some(&p));
                let b = route_label(Some(&p));
                assert!(std::ptr::eq(a, b), "one label per template");
                a.to_string()
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = rt.block_on(async {
            use tower_service::Service;
            let mut svc = router.into_service::<axum::body::Body>();
            let req = Request::get("/v1/users/alice@example.com")
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = svc.call(req).await.unwrap();
            axum::body::to_bytes(resp.into_body(), 1024).await.unwrap()
        });
        assert_eq!(&body[..], b"/v1/users/{email}");
    }
}
