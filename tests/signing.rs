//! Sealed -> ignited -> detached signatures that gpg verifies, for each
//! supported org key family, plus the org key certificate itself.

mod common;
use common::*;

async fn sign(s: &Server, token: &str, query: &str, body: &[u8]) -> reqwest::Response {
    http()
        .post(s.url(&format!("/v1/sign{query}")))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Generates `alg`, ignites over the API, signs and checks with gpg.
async fn full_cycle(alg: &str) {
    let a = Appliance::with_org_key(alg);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);

    // Sealed: health answers, signing does not.
    let h = get(&s, "/v1/health").await;
    assert_eq!(h.status(), 200);
    assert_error(get(&s, "/v1/ready").await, 503, "sealed").await;
    let r = sign(&s, &gw, "", b"data").await;
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["code"], "sealed");

    // Wrong passphrase, then the right one.
    let r = ignite(&s, &admin, "not the passphrase").await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "bad_passphrase");
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 200);
    assert_eq!(get(&s, "/v1/ready").await.status(), 200);

    // The served certificate is what gpg checks signatures against.
    let r = get(&s, "/v1/org-key").await;
    assert_eq!(r.headers()["content-type"], "application/pgp-keys");
    let cert = r.bytes().await.unwrap();
    let gpg = Gpg::new();
    gpg.import(&cert);
    let out = gpg.run(&["--check-sigs", "--with-colons"], None);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = listing.lines().filter(|l| l.starts_with("sig:!")).count();
    assert_eq!(
        good, 4,
        "direct-key, uid and two subkey bindings all good:\n{listing}"
    );
    assert!(
        !listing
            .lines()
            .any(|l| l.starts_with("sig:-") || l.starts_with("sig:%")),
        "{listing}"
    );
    // Certify-only primary, one signing and one encryption subkey.
    let mut caps: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("pub:") || l.starts_with("sub:"))
        .map(|l| l.split(':').nth(11).unwrap_or(""))
        .collect();
    caps[1..].sort();
    assert_eq!(caps[1..], ["e", "s"], "{listing}");
    assert!(
        caps[0].starts_with('c') && !caps[0].starts_with("cs"),
        "{listing}"
    );

    // Armored binary signature.
    let data = b"The quick brown fox\njumps over the lazy dog\n".repeat(100);
    let r = sign(&s, &gw, "", &data).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pgp-signature");
    let sig = r.bytes().await.unwrap();
    assert!(sig.starts_with(b"-----BEGIN PGP SIGNATURE-----"));
    let (ok, err) = gpg.verify(&sig, &data);
    assert!(ok, "gpg --verify failed for {alg}: {err}");
    assert!(err.contains("Good signature"), "{err}");
    // A changed byte must not verify.
    let mut tampered = data.clone();
    tampered[7] ^= 1;
    let (ok, err) = gpg.verify(&sig, &tampered);
    assert!(!ok, "tampered data verified: {err}");

    // Unarmored.
    let r = sign(&s, &gw, "?armor=false", &data).await;
    assert_eq!(r.status(), 200);
    let sig = r.bytes().await.unwrap();
    assert_ne!(sig[0], b'-');
    assert!(gpg.verify(&sig, &data).0);

    // Text mode: gpg normalizes line endings the same way.
    let text = b"line one\nline two\r\nline three";
    let r = sign(&s, &gw, "?mode=text", text).await;
    assert_eq!(r.status(), 200);
    let sig = r.bytes().await.unwrap();
    let pk = gpg.run(&["--list-packets"], Some(&sig));
    assert!(
        String::from_utf8_lossy(&pk.stdout).contains("sigclass 0x01"),
        "text signature expected"
    );
    let (ok, err) = gpg.verify(&sig, text);
    assert!(ok, "text signature: {err}");

    // Every signature has its audit row; the chain holds.
    drop(s);
    let out = a.ok(&["audit", "verify"], false);
    assert!(out.contains("audit chain intact"), "{out}");
    let list = a.ok(&["audit", "list", "--last", "100"], false);
    assert_eq!(
        list.lines().filter(|l| l.contains("\tsign\tok\t")).count(),
        3,
        "{list}"
    );
    assert_eq!(
        list.lines()
            .filter(|l| l.contains("\tignition\tdenied"))
            .count(),
        1,
        "{list}"
    );
}

#[tokio::test]
async fn p256_org_key_signs_and_gpg_verifies() {
    full_cycle("p256").await;
}

#[tokio::test]
async fn ed25519_org_key_signs_and_gpg_verifies() {
    full_cycle("ed25519").await;
}

#[tokio::test]
async fn rsa3072_org_key_signs_and_gpg_verifies() {
    full_cycle("rsa3072").await;
}

#[tokio::test]
async fn p384_org_key_signs_and_gpg_verifies() {
    full_cycle("p384").await;
}

#[tokio::test]
async fn body_limit_and_query_errors_are_clean_4xx() {
    let a = Appliance::with_org_key("p256");
    // A small limit so the test stays small.
    a.set_config("server.max_body", "1KiB");
    let gw = a.client("gw", "sign");
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);

    let r = sign(&s, &gw, "", &[b'x'; 1024]).await;
    assert_eq!(r.status(), 200, "exactly at the limit is fine");
    let r = sign(&s, &gw, "", &[b'x'; 1025]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "body_too_large");
    // Chunked upload without Content-Length is cut off while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 512])).collect();
    let body = reqwest::Body::wrap_stream(futures_stream(chunks));
    let r = http()
        .post(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "body_too_large").await;

    for q in ["?mode=poem", "?armor=maybe", "?colour=blue"] {
        let r = sign(&s, &gw, q, b"x").await;
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(error_code(r).await, "bad_request", "{q}");
    }
    let r = http()
        .get(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "method_not_allowed");
    let r = get(&s, "/v1/nothing").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_found");

    // Only the one successful signature was audited.
    drop(s);
    let list = a.ok(&["audit", "list"], false);
    assert_eq!(
        list.lines().filter(|l| l.contains("\tsign\t")).count(),
        1,
        "{list}"
    );
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(chunks.into_iter())
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_and_others_are_not_affected() {
    let a = Appliance::with_org_key("p256");
    a.set_config("rate_limits.default", "off");
    a.set_config("rate_limits.clients.slow", "2/m");
    let admin = a.client("admin", "admin");
    let slow = a.client("slow", "sign");
    let fast = a.client("fast", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(sign(&s, &slow, "", b"one").await.status(), 200);
    let r = sign(&s, &slow, "", b"two").await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(error_code(r).await, "rate_limited");
    for _ in 0..20 {
        assert_eq!(sign(&s, &fast, "", b"data").await.status(), 200);
    }
    // Nothing was signed for the refused request.
    let audit = a.ok(&["audit", "list", "--last", "50"], false);
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tslow\tsign\t"))
        .count();
    assert_eq!(signed, 1, "{audit}");
}

#[tokio::test]
async fn no_signature_leaves_when_its_audit_row_cannot_be_written() {
    let a = Appliance::with_org_key("p256");
    a.set_config("store.busy_timeout", "300ms");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(sign(&s, &gw, "", b"before").await.status(), 200);

    // Another process holds the store's write lock: the audit row cannot be written.
    let lock = a.lock_store_writes();
    let r = sign(&s, &gw, "", b"while locked").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "audit_unavailable");

    // Lock released: signing works again, and the chain has exactly the
    // signatures that were returned.
    lock.release();
    assert_eq!(sign(&s, &gw, "", b"after").await.status(), 200);
    s.stop();
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let audit = a.ok(&["audit", "list", "--last", "50"], false);
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tgateway\tsign\tok"))
        .count();
    assert_eq!(signed, 2, "{audit}");
}

/// The disk under the store fills up (the server may not grow any file past
/// a limit): signing turns into 503 audit_unavailable, never a signature
/// without its audit row, and once there is room again the chain is intact
/// and holds exactly the signatures that were returned.
#[tokio::test]
async fn a_full_disk_stops_signing_without_losing_audit_rows() {
    if skip_on_postgres("the full disk is under the SQLite file") {
        return;
    }
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let wal = a.db().with_extension("db-wal");
    // Room for the store as it is now plus a little.
    let used = std::fs::metadata(a.db()).unwrap().len();
    let limit_kib = used / 1024 + 256;
    let s = a.serve_with_file_size_limit(limit_kib);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let mut ok = 0;
    let mut refused = 0;
    let body = vec![b'x'; 1024];
    for _ in 0..3000 {
        let r = sign(&s, &gw, "", &body).await;
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(error_code(r).await, "audit_unavailable");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    assert!(ok > 0 && refused == 5, "ok {ok}, refused {refused}");
    eprintln!("{ok} signatures before the store's disk was full");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) <= limit_kib * 1024,
        "the store stayed within the limit"
    );
    let log = std::fs::read_to_string(a.path("serve.log")).unwrap();
    // EFBIG reaches SQLite as a write error (ENOSPC would say "full").
    assert!(
        log.contains("signature withheld") && log.contains("disk I/O error"),
        "the log says why: {log}"
    );
    assert!(s.stop().success(), "the server stays up and stops cleanly");

    // Room again: the chain is intact, every returned signature has its row
    // and no refused one has, and signing works.
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let signed = |a: &Appliance| {
        a.ok(&["audit", "list", "--last", "100000"], false)
            .lines()
            .filter(|l| l.contains("\tgateway\tsign\tok"))
            .count()
    };
    assert_eq!(signed(&a), ok);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(sign(&s, &gw, "", b"after").await.status(), 200);
    s.stop();
    assert_eq!(signed(&a), ok + 1);
}
