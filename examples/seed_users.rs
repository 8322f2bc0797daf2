//! Fills an appliance's store with N synthetic users (Ed25519 keys made
//! here with sequoia, one managed user ID each, not yet certified) for
//! scripts/bench-maintenance.sh.
//!
//!   seed_users <store.db> <count> [domain]

use orgkey::clock::SystemClock;
use orgkey::store::{AuditEvent, SaveUserKey, Store};
use sequoia_openpgp::cert::CertBuilder;
use sequoia_openpgp::serialize::SerializeInto;
use std::sync::Arc;

const CHUNK: usize = 2000;

fn make(i: usize, domain: &str) -> SaveUserKey {
    let email = format!("user{i:07}@{domain}");
    let uid = format!("User {i} <{email}>");
    let (cert, _) = CertBuilder::new()
        .add_userid(uid.as_str())
        .set_cipher_suite(sequoia_openpgp::cert::CipherSuite::Cv25519)
        .generate()
        .expect("key generation");
    let cert = cert.strip_secret_key_material();
    SaveUserKey {
        fingerprint: cert.fingerprint().to_hex(),
        keyid: cert.keyid().to_hex(),
        cert: String::from_utf8(cert.armored().to_vec().expect("armor")).expect("utf-8"),
        certified_by: None,
        cert_expires: None,
        expected_version: None,
        emails: vec![(email, uid)],
        touch: true,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: seed_users <store.db> <count> [domain]");
        std::process::exit(2);
    }
    let count: usize = args[2].parse().expect("count");
    let domain = args.get(3).cloned().unwrap_or_else(|| "example.com".into());
    let store = Store::open(std::path::Path::new(&args[1]), false, Arc::new(SystemClock))
        .await
        .expect("opening the store");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut start = 0;
    while start < count {
        let end = (start + CHUNK).min(count);
        let chunk: Vec<SaveUserKey> = std::thread::scope(|s| {
            let per = (end - start).div_ceil(threads);
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let lo = start + t * per;
                    let hi = (lo + per).min(end);
                    let domain = domain.as_str();
                    s.spawn(move || (lo..hi).map(|i| make(i, domain)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        });
        store
            .import_user_keys(
                &chunk,
                &AuditEvent::new("bench", "users-import", "ok")
                    .detail(format!("{} synthetic users", chunk.len())),
            )
            .await
            .expect("import");
        start = end;
        eprint!("\rseeded {start}/{count}");
    }
    eprintln!();
    store.close().await;
}
