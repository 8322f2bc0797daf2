//! Smoke run of the fuzz targets (fuzz/, run for real with `cargo +nightly
//! fuzz run TARGET`, see docs/fuzzing.md): every checked-in seed plus
//! deterministic mutations of it (bit flips, truncations, duplicated and
//! deleted ranges) goes through the same entry points. None may panic.

use std::path::Path;

const MUTATIONS: u64 = 200;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            3 if v.len() > 2 => {
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len());
                v.splice(at..at, chunk);
            }
            _ if v.len() > 2 => {
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                v.drain(a..b);
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, f: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let seed = std::fs::read(entry.unwrap().path()).unwrap();
        seeds += 1;
        f(&seed);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64);
        for _ in 0..MUTATIONS {
            f(&mutate(&seed, &mut rng));
        }
    }
    assert!(seeds > 0, "no seeds for {target}");
}

#[test]
fn user_keys() {
    run("user_key", orgkey::fuzzing::user_key);
}

#[test]
fn csrs() {
    run("csr", orgkey::fuzzing::csr);
}

#[test]
fn client_certs() {
    run("client_cert", orgkey::fuzzing::client_cert);
}

#[test]
fn ca_keypairs() {
    run("ca_keypair", orgkey::fuzzing::ca_keypair);
}

#[test]
fn key_backups() {
    run("key_backup", orgkey::fuzzing::key_backup);
}

#[test]
fn state_backups() {
    let org =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/org-key.asc")).unwrap();
    run("state_backup", |d| orgkey::fuzzing::state_backup(&org, d));
}

#[test]
fn request_inputs() {
    run("request_input", orgkey::fuzzing::request_input);
}

#[test]
fn configs() {
    run("config", orgkey::fuzzing::config);
}
