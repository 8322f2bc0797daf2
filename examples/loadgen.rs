//! HTTP load generator for scripts/bench.sh: N concurrent keep-alive clients
//! POST a fixed body to one URL for a fixed time and report requests/s and
//! latency percentiles. Every non-2xx response is counted as an error.
//!
//! usage: loadgen URL BEARER_TOKEN CLIENTS SECONDS BODY [RATE]
//! BODY is a byte count (that many 'a's) or @FILE (the file's contents).
//! Without RATE every client sends its next request as soon as the last one
//! is answered (closed loop: the maximum rate). With RATE (requests/s, all
//! clients together) each client sends on a fixed schedule, and latency
//! counts from the scheduled send time, so a stall shows up in the
//! percentiles instead of slowing the load down (no coordinated omission).

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 && args.len() != 7 {
        eprintln!("usage: loadgen URL BEARER_TOKEN CLIENTS SECONDS BODY_BYTES|@FILE [RATE]");
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
    // Per client: the time between two scheduled sends.
    let interval = args.get(6).map(|r| {
        let rate: f64 = r.parse().expect("RATE");
        assert!(rate > 0.0, "RATE must be positive");
        Duration::from_secs_f64(clients as f64 / rate)
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            // Paced clients start spread over one interval.
            let mut next = interval.map(|iv| start + iv.mul_f64(i as f64 / clients as f64));
            loop {
                let t = match (next, interval) {
                    (Some(at), Some(iv)) => {
                        tokio::time::sleep_until(at.into()).await;
                        next = Some(at + iv);
                        at
                    }
                    _ => Instant::now(),
                };
                if t >= deadline {
                    break;
                }
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
                    Ok(r) => {
                        errors += 1;
                        if first_error.is_none() {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            first_error = Some(format!("{status} {body}"));
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, f) = t.await.unwrap();
        all.extend(l);
        errors += e;
        first_error = first_error.or(f);
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
    if let Some(e) = first_error {
        println!("first_error {}", e.replace('\n', " "));
    }
    println!(
        "latency_ms p50 {:.2} p99 {:.2}",
        pct(0.50).unwrap_or_default().as_secs_f64() * 1e3,
        pct(0.99).unwrap_or_default().as_secs_f64() * 1e3
    );
}
