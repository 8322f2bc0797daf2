//! `orgkey-docker-api-shim`: lets a Docker API client that is newer than the
//! engine talk to it.
//!
//! testcontainers 0.28 (bollard 0.21) puts API version 1.53 in every request
//! path, and engines answer "client version 1.53 is too new" when they speak
//! less (Debian 12's Docker 20.10 speaks 1.41). This proxy listens on a Unix
//! socket, asks the engine for its API version once, and forwards each
//! connection to the engine's socket with the version in the request path
//! lowered to the engine's. It reads only the request head: it lowers the
//! version, and asks for `Connection: close` (except for upgrades such as
//! exec attach) so that each connection carries exactly one request and
//! everything after the head is passed on untouched, both ways. Requests for
//! a version the engine speaks pass as they are.
//!
//! The engine then answers in its own version. Fields newer than it are
//! missing from its answers and ignored in requests, which is fine for what
//! testcontainers does (create, start, inspect, logs, exec, copy, stop,
//! networks) and is checked by the container tests that run through it.
//!
//! The socket gives the same power as the engine's own: it is created mode
//! 0600, for this user only.

use std::borrow::Cow;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// A request head larger than this is refused (Docker's own are small).
const MAX_HEAD: usize = 64 * 1024;

const USAGE: &str = "usage: orgkey-docker-api-shim --listen SOCKET [--upstream ENGINE_SOCKET]

Forwards Docker API requests from SOCKET to the engine (default: DOCKER_HOST
when it is unix://..., else /var/run/docker.sock), lowering the API version in
request paths to the engine's. Then: DOCKER_HOST=unix://SOCKET cargo test ...";

fn main() -> ExitCode {
    let (listen, upstream) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("orgkey-docker-api-shim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orgkey-docker-api-shim: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&listen, &upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orgkey-docker-api-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<(PathBuf, PathBuf)>, String> {
    let mut listen = None;
    let mut upstream = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(PathBuf::from(args.next().ok_or("--listen needs a path")?)),
            "--upstream" => {
                upstream = Some(PathBuf::from(args.next().ok_or("--upstream needs a path")?))
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let upstream = match upstream {
        Some(u) => u,
        None => match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
            Ok(h) if !h.is_empty() => {
                return Err(format!(
                    "DOCKER_HOST={h} is not a unix:// socket; pass --upstream"
                ));
            }
            _ => PathBuf::from("/var/run/docker.sock"),
        },
    };
    if listen == upstream {
        return Err("--listen and the engine's socket are the same path".into());
    }
    Ok(Some((listen, upstream)))
}

async fn run(listen: &Path, upstream: &Path) -> Result<(), String> {
    let engine = engine_api_version(upstream).await?;
    // A socket left by an earlier run is replaced; any other file is not.
    if let Ok(meta) = std::fs::symlink_metadata(listen) {
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", listen.display()));
        }
        std::fs::remove_file(listen)
            .map_err(|e| format!("removing the old {}: {e}", listen.display()))?;
    }
    let listener = UnixListener::bind(listen)
        .map_err(|e| format!("listening on {}: {e}", listen.display()))?;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 0600 {}: {e}", listen.display()))?;
    eprintln!(
        "orgkey-docker-api-shim: {} -> {} (engine API {}.{})",
        listen.display(),
        upstream.display(),
        engine.0,
        engine.1
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, _) = accepted.map_err(|e| format!("accept: {e}"))?;
                let upstream = upstream.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = forward(client, &upstream, engine).await {
                        eprintln!("orgkey-docker-api-shim: {e}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(listen);
    Ok(())
}

/// The engine's own API version, from `GET /version` (unversioned).
async fn engine_api_version(upstream: &Path) -> Result<(u32, u32), String> {
    let what = || {
        format!(
            "asking the engine at {} for its version",
            upstream.display()
        )
    };
    let mut s = UnixStream::connect(upstream)
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("{}: {e}", what()))?;
    let body = find(&answer, b"\r\n\r\n")
        .map(|i| &answer[i + 4..])
        .ok_or_else(|| format!("{}: no HTTP answer", what()))?;
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{}: {e}", what()))?;
    json.get("ApiVersion")
        .and_then(|v| v.as_str())
        .and_then(parse_version)
        .ok_or_else(|| {
            format!(
                "{}: no ApiVersion in {}",
                what(),
                String::from_utf8_lossy(body)
            )
        })
}

async fn forward(
    mut client: UnixStream,
    upstream: &Path,
    engine: (u32, u32),
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head over 64 KiB".into());
        }
        let mut chunk = [0u8; 4096];
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading a request: {e}"))?;
        if n == 0 {
            // The client closed before a whole request: nothing to forward.
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = rewrite_head(&buf[..head_end], engine);
    let mut engine_conn = UnixStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to {}: {e}", upstream.display()))?;
    engine_conn
        .write_all(&head)
        .await
        .map_err(|e| format!("to the engine: {e}"))?;
    engine_conn
        .write_all(&buf[head_end..])
        .await
        .map_err(|e| format!("to the engine: {e}"))?;
    // A peer that goes away mid-stream (a follow of logs cancelled by the
    // client) is normal: not worth a message.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine_conn).await;
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Lowers `/vMAJOR.MINOR/` at the start of the request target to `engine`
/// when it is newer, and asks for `Connection: close` unless the request is
/// an upgrade. A head that is not ASCII text is passed on unchanged (the
/// engine will refuse it).
fn rewrite_head(head: &[u8], engine: (u32, u32)) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(head) else {
        return head.to_vec();
    };
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let Some(request_line) = lines.next() else {
        return head.to_vec();
    };
    let headers: Vec<&str> = lines.collect();
    let mut parts = request_line.splitn(3, ' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return head.to_vec();
    };
    let target = lower_version(target, engine);
    let header_name = |h: &str| {
        h.split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let upgrade = headers.iter().any(|h| header_name(h) == "upgrade");
    let mut out = format!("{method} {target} {version}\r\n");
    for h in &headers {
        let name = header_name(h);
        if !upgrade && (name == "connection" || name == "keep-alive") {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !upgrade {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn lower_version(target: &str, engine: (u32, u32)) -> Cow<'_, str> {
    let Some(rest) = target.strip_prefix("/v") else {
        return Cow::Borrowed(target);
    };
    let Some((version, path)) = rest.split_once('/') else {
        return Cow::Borrowed(target);
    };
    match parse_version(version) {
        Some(asked) if asked > engine => Cow::Owned(format!("/v{}.{}/{path}", engine.0, engine.1)),
        _ => Cow::Borrowed(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(head: &str, engine: (u32, u32)) -> String {
        String::from_utf8(rewrite_head(head.as_bytes(), engine)).unwrap()
    }

    #[test]
    fn newer_versions_are_lowered_and_the_connection_closed() {
        let out = rewrite(
            "POST /v1.53/containers/create?name=x HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            (1, 41),
        );
        assert_eq!(
            out,
            "POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn versions_the_engine_speaks_pass_unchanged() {
        let out = rewrite(
            "GET /v1.40/version HTTP/1.1\r\nHost: docker\r\n\r\n",
            (1, 41),
        );
        assert!(out.starts_with("GET /v1.40/version HTTP/1.1\r\n"), "{out}");
        let out = rewrite("GET /_ping HTTP/1.1\r\n\r\n", (1, 41));
        assert!(out.starts_with("GET /_ping HTTP/1.1\r\n"), "{out}");
        // 1.100 is newer than 1.53: compared as numbers, not text.
        let out = rewrite("GET /v1.100/info HTTP/1.1\r\n\r\n", (1, 53));
        assert!(out.starts_with("GET /v1.53/info HTTP/1.1\r\n"), "{out}");
        let out = rewrite("GET /v1.9/info HTTP/1.1\r\n\r\n", (1, 41));
        assert!(out.starts_with("GET /v1.9/info HTTP/1.1\r\n"), "{out}");
    }

    #[test]
    fn upgrades_keep_their_connection_headers() {
        let out = rewrite(
            "POST /v1.53/exec/abc/start HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
            (1, 41),
        );
        assert_eq!(
            out,
            "POST /v1.41/exec/abc/start HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        );
    }

    #[test]
    fn odd_heads_pass_unchanged() {
        assert_eq!(
            rewrite_head(b"\xff\xfe\r\n\r\n", (1, 41)),
            b"\xff\xfe\r\n\r\n"
        );
        assert_eq!(rewrite("NONSENSE\r\n\r\n", (1, 41)), "NONSENSE\r\n\r\n");
        assert_eq!(
            rewrite("GET /vX.Y/info HTTP/1.1\r\n\r\n", (1, 41)),
            "GET /vX.Y/info HTTP/1.1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert_eq!(
            args(&["--listen", "/tmp/s", "--upstream", "/run/d.sock"]).unwrap(),
            Some((PathBuf::from("/tmp/s"), PathBuf::from("/run/d.sock")))
        );
        assert_eq!(args(&["--help"]).unwrap(), None);
        assert!(
            args(&["--upstream", "/x"])
                .unwrap_err()
                .contains("--listen is required")
        );
        assert!(args(&["--listen"]).unwrap_err().contains("needs a path"));
        assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(
            args(&["--listen", "/x", "--upstream", "/x"])
                .unwrap_err()
                .contains("same path")
        );
    }
}
