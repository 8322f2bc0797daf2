//! HTTP load generator for scripts/bench.sh: N concurrent keep-alive clients
//! POST a fixed body to one URL for a fixed time and report requests/s and
//! latency percentiles. Every non-2xx response is counted as an error.
//!
//! usage: loadgen URL BEARER_TOKEN CLIENTS SECONDS BODY
//! BODY is a byte count (that many 'a's) or @FILE (the file's contents).

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: loadgen URL BEARER_TOKEN CLIENTS SECONDS BODY_BYTES|@FILE");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let token = args[2].clone();
    let clients: usize = args[3].parse().expect("CLIENTS");
    let secs: u64 = args[4].parse().expect("SECONDS");
    let body = match args[5].strip_prefix('@') {
        Some(file) => std::fs::read(file).expect("reading the body file"),
        None => vec![b'a'; args[5].parse().expect("BODY_BYTES")],
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    println!("requests_per_sec {:.0}", all.len() as f64 / elapsed);
    println!("requests_ok {}", all.len());
    println!("errors {errors}");
    println!(
        "latency_ms p50 {:.2} p99 {:.2}",
        pct(0.50).unwrap_or_default().as_secs_f64() * 1e3,
        pct(0.99).unwrap_or_default().as_secs_f64() * 1e3
    );
}
