//! Mixed load for scripts/load.sh: CLIENTS concurrent keep-alive clients,
//! each sending REQUESTS requests that rotate through /v1/sign, /v1/certify
//! (a fresh user key each time, made here with sequoia) and
//! /v1/x509/issue?renew=true (a CSR file). Prints per-kind 2xx counts, the
//! error count and latency percentiles.
//!
//! With USER_POOL_DIR the user keys are kept there and submitted again by
//! later runs, as a gateway does for an organization of a fixed size (the soak
//! uses this so the store does not grow without bound).
//!
//! usage: mixedload URL TOKEN CLIENTS REQUESTS CSR_FILE [USER_POOL_DIR]

use sequoia_openpgp::cert::CertBuilder;
use sequoia_openpgp::serialize::SerializeInto;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        eprintln!("usage: mixedload URL TOKEN CLIENTS REQUESTS CSR_FILE [USER_POOL_DIR]");
        std::process::exit(2);
    }
    let base = args[1].clone();
    let token = args[2].clone();
    let clients: usize = args[3].parse().expect("CLIENTS");
    let requests: usize = args[4].parse().expect("REQUESTS");
    let csr = Arc::new(std::fs::read(&args[5]).expect("CSR file"));
    let pool = args.get(6).map(std::path::PathBuf::from);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, token, csr, pool) = (
            http.clone(),
            base.clone(),
            token.clone(),
            Arc::clone(&csr),
            pool.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ok = [0u64; 3];
            let mut errors = 0u64;
            for i in 0..requests {
                let kind = i % 3;
                let req = match kind {
                    0 => http
                        .post(format!("{base}/v1/sign"))
                        .body(format!("message {c}/{i}")),
                    1 => {
                        let uid = format!("Load User <load-{c}-{i}@example.com>");
                        let kept = pool.as_ref().map(|d| d.join(format!("{c}-{i}.asc")));
                        let body = tokio::task::spawn_blocking(move || {
                            if let Some(Ok(body)) = kept.as_ref().map(std::fs::read) {
                                return body;
                            }
                            let (cert, _) = CertBuilder::general_purpose(Some(uid.as_str()))
                                .generate()
                                .expect("key generation");
                            let body = cert
                                .strip_secret_key_material()
                                .armored()
                                .to_vec()
                                .expect("armor");
                            if let Some(path) = kept {
                                std::fs::write(path, &body).expect("writing the user pool");
                            }
                            body
                        })
                        .await
                        .unwrap();
                        http.post(format!("{base}/v1/certify")).body(body)
                    }
                    _ => http
                        .post(format!("{base}/v1/x509/issue?renew=true"))
                        .body(csr.as_ref().clone()),
                };
                let t = Instant::now();
                match req.bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                        ok[kind] += 1;
                    }
                    Ok(r) => {
                        eprintln!("{} {}", r.status(), r.text().await.unwrap_or_default());
                        errors += 1;
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        errors += 1;
                    }
                }
            }
            (lat, ok, errors)
        }));
    }
    let mut all = Vec::new();
    let mut ok = [0u64; 3];
    let mut errors = 0;
    for t in tasks {
        let (l, o, e) = t.await.unwrap();
        all.extend(l);
        for k in 0..3 {
            ok[k] += o[k];
        }
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    println!("sign_ok {}", ok[0]);
    println!("certify_ok {}", ok[1]);
    println!("issue_ok {}", ok[2]);
    println!("errors {errors}");
    println!("latency_ms p50 {:.2} p99 {:.2}", pct(0.50), pct(0.99));
}
