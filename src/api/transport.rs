//! Connection limits of the API server: how many connections may be open,
//! and how long a connection may take to send a request head or sit idle.
//! (How long a request body may take is the handlers' business, see
//! `shared::read_body`.)
//!
//! hyper's HTTP/1 header timer alone does not bound a connection: it starts
//! only once hyper has told HTTP/1 from HTTP/2 (axum-server serves both), so
//! a client that connects and sends nothing, or a prefix of the HTTP/2
//! preface, is never timed; HTTP/2 has no header timer; and on a keep-alive
//! connection the timer also counts the wait for the next request, so an
//! idle timeout could never be longer than it. So every connection is
//! watched here, at the byte stream. [`Admission`] takes a permit of the
//! connection cap before anything else is done for a connection (no permit:
//! the connection is closed at once), and [`WatchingAcceptor`] hands hyper a
//! [`Watched`] stream, which holds the permit, and a [`Tracked`] service,
//! which share the connection's [`Activity`]. The stream fails with
//! `TimedOut` (hyper then closes the connection) when, with no request being
//! handled,
//! - a request head is awaited (on a new connection, or once a byte of a
//!   further request arrived) for longer than `header_read_timeout`, or
//! - nothing was received since the last request and nothing sent for
//!   `idle_timeout` (keep-alive between requests; a response the client does
//!   not read).
//!
//! While a request is being handled the handler's own deadlines apply
//! (`[token] deadline`, `[server] body_timeout`). hyper's own HTTP/1 header
//! timer is set as well, to the longest wait these rules allow, as a second
//! bound inside the HTTP parser.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connection limits (`[server]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest wait for a request head (and for a TLS handshake).
    pub header_read_timeout: Duration,
    /// Longest wait between requests, and for a client to read a response.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The bound for hyper's HTTP/1 header timer, which starts when a
    /// connection is ready for a request: the longest the watch here lets a
    /// connection go from there to a complete request head.
    pub(super) fn hyper_header_read_timeout(&self) -> Duration {
        self.header_read_timeout + self.idle_timeout
    }
}

/// What the stream and the service of one connection know about it.
#[derive(Debug)]
struct Activity {
    limits: ConnectionLimits,
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests being handled.
    in_flight: usize,
    /// Since when a request head is awaited: the connection's start, or the
    /// first byte received after the last request.
    head_since: Option<Instant>,
    /// The end of the last request, or the last bytes sent since.
    last: Instant,
}

impl Activity {
    fn new(limits: ConnectionLimits, now: Instant) -> Self {
        Self {
            limits,
            state: Mutex::new(ActivityState {
                in_flight: 0,
                head_since: Some(now),
                last: now,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ActivityState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn received(&self, now: Instant) {
        self.with(|s| {
            if s.in_flight == 0 && s.head_since.is_none() {
                s.head_since = Some(now);
            }
        });
    }

    fn sent(&self, now: Instant) {
        self.with(|s| s.last = now);
    }

    fn request_started(&self) {
        self.with(|s| {
            s.in_flight += 1;
            s.head_since = None;
        });
    }

    fn request_ended(&self, now: Instant) {
        self.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last = now;
        });
    }

    /// When the connection is closed unless something happens first, and
    /// why; `None` while a request is being handled.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        self.with(|s| {
            if s.in_flight > 0 {
                return None;
            }
            Some(match s.head_since {
                Some(t) => (
                    t + self.limits.header_read_timeout,
                    "no complete request head within [server] header_read_timeout",
                ),
                None => (
                    s.last + self.limits.idle_timeout,
                    "connection idle for [server] idle_timeout",
                ),
            })
        })
    }
}

/// A client connection's byte stream, closed (by failing with `TimedOut`)
/// when its [`Activity`] says so; holds the connection's permit.
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Watched<T> {
    /// `Ready(Err)` once the deadline has passed, else `Pending` with the
    /// timer armed for it.
    fn expired<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some((deadline, why)) = self.activity.deadline() else {
            return Poll::Pending;
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("closing a client connection: {why}");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.sent(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.expired(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.received(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }
}

/// A connection's service: marks each request as being handled from the
/// moment its head is complete until its response is ready (or the request
/// is dropped).
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended(Instant::now());
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, R> tower_service::Service<R> for Tracked<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.activity.request_started();
        let in_flight = InFlight(Arc::clone(&self.activity));
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            drop(in_flight);
            r
        })
    }
}

/// Refused connections, counted between log lines (a flood must not flood
/// the log too).
#[derive(Debug, Default)]
struct Refusals {
    state: Mutex<(u64, Option<Instant>)>,
}

impl Refusals {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn note(&self, max: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        let now = Instant::now();
        if s.1.is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY) {
            tracing::warn!(
                refused = s.0,
                max_connections = max,
                "connection limit reached: new connections are closed at once until some end \
                 ([server] max_connections)"
            );
            *s = (0, Some(now));
        }
    }
}

/// Any error, for axum-server.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection cap, as the router's make-service: axum-server asks it for
/// a connection's service in its accept loop, right after accepting and
/// before it spawns anything for the connection. Without a free permit the
/// answer is an error, on which axum-server drops the connection there and
/// then; so the server never holds more than `max_connections` client
/// sockets, plus the one it is accepting, however fast clients connect.
#[derive(Clone)]
pub struct Admission<M> {
    inner: M,
    max_connections: usize,
    permits: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl<M> Admission<M> {
    /// At most `max_connections` connections of `inner` at once.
    pub fn new(inner: M, max_connections: usize) -> Self {
        Self {
            inner,
            max_connections,
            permits: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::default(),
        }
    }
}

/// A connection's service with the permit it was admitted with, on its way
/// to [`WatchingAcceptor`], which keeps the permit for the connection's
/// life. (axum-server wants the service `Clone`; the permit is taken out
/// once.)
#[derive(Clone)]
pub struct Admitted<S> {
    service: S,
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl<M, T> tower_service::Service<T> for Admission<M>
where
    M: tower_service::Service<T>,
    M::Response: Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send + 'static,
{
    type Response = Admitted<M::Response>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.refusals.note(self.max_connections);
            return Box::pin(std::future::ready(Err("connection limit reached".into())));
        };
        let service = self.inner.call(target);
        Box::pin(async move {
            Ok(Admitted {
                service: service.await.map_err(Into::into)?,
                permit: Arc::new(Mutex::new(Some(permit))),
            })
        })
    }
}

/// Never called: [`WatchingAcceptor`] unwraps the service before hyper
/// sees it. It exists because axum-server wants the made service to be one.
impl<S, R> tower_service::Service<R> for Admitted<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.service.call(req)
    }
}

/// Wraps axum-server's acceptor (plain TCP or rustls): keeps the admitted
/// connection's permit and watches the connection.
#[derive(Clone)]
pub struct WatchingAcceptor<A> {
    inner: A,
    limits: ConnectionLimits,
}

impl<A> WatchingAcceptor<A> {
    /// Watches the connections `inner` accepts.
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self { inner, limits }
    }
}

impl<A, I, S> axum_server::accept::Accept<I, Admitted<S>> for WatchingAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Watched<A::Stream>;
    type Service = Tracked<A::Service>;
    type Future = BoxFuture<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, admitted: Admitted<S>) -> Self::Future {
        let permit = admitted
            .permit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(permit) = permit else {
            // Each admission makes one service for one connection.
            return Box::pin(std::future::ready(Err(io::Error::other(
                "a connection without its admission permit",
            ))));
        };
        let handshake = self.inner.accept(stream, admitted.service);
        let limits = self.limits;
        Box::pin(async move {
            let (io, service) = handshake.await?;
            let now = Instant::now();
            let activity = Arc::new(Activity::new(limits, now));
            let watched = Watched {
                io,
                activity: Arc::clone(&activity),
                timer: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
                _permit: permit,
            };
            Ok((
                watched,
                Tracked {
                    inner: service,
                    activity,
                },
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 2,
    };

    #[test]
    fn the_deadline_follows_the_connection_through_its_requests() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let a = Activity::new(LIMITS, t0);
        // A new connection has header_read_timeout for its first head,
        // however it trickles in.
        assert_eq!(a.deadline().unwrap().0, t0 + s(10));
        a.received(t0 + s(5));
        assert_eq!(a.deadline().unwrap().0, t0 + s(10));
        // A request being handled is the handler's business.
        a.request_started();
        assert_eq!(a.deadline(), None);
        a.received(t0 + s(20));
        assert_eq!(a.deadline(), None);
        a.request_ended(t0 + s(30));
        // Between requests: idle_timeout from the end of the last one, or
        // from the last bytes sent.
        assert_eq!(a.deadline().unwrap().0, t0 + s(90));
        a.sent(t0 + s(31));
        assert_eq!(a.deadline().unwrap().0, t0 + s(91));
        // The first byte of the next request starts its header timer.
        a.received(t0 + s(50));
        assert_eq!(a.deadline().unwrap().0, t0 + s(60));
        a.received(t0 + s(55));
        assert_eq!(a.deadline().unwrap().0, t0 + s(60));
        // Two requests at once (HTTP/2): handled until both end.
        a.request_started();
        a.request_started();
        a.request_ended(t0 + s(56));
        assert_eq!(a.deadline(), None);
        a.request_ended(t0 + s(57));
        assert_eq!(a.deadline().unwrap().0, t0 + s(117));
        assert!(LIMITS.hyper_header_read_timeout() >= s(60) + s(10));
    }

    struct Echo;

    impl tower_service::Service<u8> for Echo {
        type Response = u8;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u8, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: u8) -> Self::Future {
            std::future::ready(Ok(req))
        }
    }

    impl Clone for Echo {
        fn clone(&self) -> Self {
            Echo
        }
    }

    /// Admits and accepts one in-memory connection.
    async fn accept(
        admission: &mut Admission<MakeEcho>,
    ) -> Result<
        (
            Watched<tokio::io::DuplexStream>,
            Tracked<Echo>,
            tokio::io::DuplexStream,
        ),
        BoxError,
    > {
        use axum_server::accept::Accept;
        use tower_service::Service;
        let admitted = admission.call(()).await?;
        let acceptor = WatchingAcceptor::new(axum_server::accept::DefaultAcceptor, LIMITS);
        let (server, client) = tokio::io::duplex(64);
        let (watched, service) = acceptor.accept(server, admitted).await?;
        Ok((watched, service, client))
    }

    #[derive(Clone)]
    struct MakeEcho;

    impl tower_service::Service<()> for MakeEcho {
        type Response = Echo;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Echo, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(Echo))
        }
    }

    fn admission() -> Admission<MakeEcho> {
        Admission::new(MakeEcho, LIMITS.max_connections)
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_cap_are_refused_until_one_ends() {
        let mut admission = admission();
        let first = accept(&mut admission).await.unwrap();
        let _second = accept(&mut admission).await.unwrap();
        assert!(accept(&mut admission).await.is_err(), "a third connection");
        drop(first);
        assert!(accept(&mut admission).await.is_ok(), "a slot was freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_header_deadline() {
        let (mut watched, _service, mut client) = accept(&mut admission()).await.unwrap();
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 8);
        let started = Instant::now();
        let e = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= LIMITS.header_read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_is_never_cut_and_idle_time_counts_after_it() {
        use tower_service::Service;
        let (mut watched, mut service, _client) = accept(&mut admission()).await.unwrap();
        let mut buf = [0u8; 16];
        // A slow handler: nothing moves for longer than both timeouts.
        let handling = service.call(1);
        let read = tokio::time::timeout(Duration::from_secs(300), watched.read(&mut buf)).await;
        assert!(read.is_err(), "still open while the request is handled");
        assert_eq!(handling.await.unwrap(), 1);
        // Now idle: closed after idle_timeout, not header_read_timeout.
        let started = Instant::now();
        let e = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMITS.idle_timeout);
    }
}
