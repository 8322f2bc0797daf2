//! `GET /metrics` of a real appliance: every scrape parses as the Prometheus
//! text format, counters follow requests (under route templates, never raw
//! paths), `orgkey_sealed` follows ignition and sealing, the expiry gauges
//! are what `orgkey org-key show` and openssl read from the org key, the org
//! cert and the CRL, no label carries an email, a serial or a fingerprint,
//! `[metrics] listen` moves `/metrics` to a port of its own, and the alert
//! rules in docs/operations.md parse and name only metrics the appliance
//! exposes.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// The Prometheus text format (version 0.0.4)

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape, parsed.
#[derive(Debug)]
struct Exposition {
    /// Family name -> type, from the `# TYPE` lines.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// The names a family of `kind` gives its samples.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{family}{s}"))
            .collect(),
        "summary" => vec![
            family.to_string(),
            format!("{family}_sum"),
            format!("{family}_count"),
        ],
        _ => vec![family.to_string()],
    }
}

/// `{a="x",b="y\"z"}` (after the `{`): the labels and the rest of the line.
fn parse_labels(line: &str, mut rest: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_string());
        }
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without a quoted value: {line}"));
        assert!(is_name(key, false), "bad label name {key:?}: {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        assert!(
            labels.insert(key.to_string(), value).is_none(),
            "label {key} twice: {line}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(s: &str, line: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {s:?}: {line}")),
    }
}

/// Parses a scrape, asserting the format: HELP and TYPE comments, then
/// `name{labels} value [timestamp]` lines of a declared family, no series
/// twice, histogram buckets with `le`.
fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(is_name(name, true), "bad family name: {line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "unknown type: {line}"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "TYPE twice: {line}"
                    );
                }
                (Some("HELP"), Some(name), _) => {
                    assert!(is_name(name, true), "bad family name: {line}")
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample without a value: {line}"));
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name {name:?}: {line}");
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(after) => parse_labels(line, after),
            None => (BTreeMap::new(), line[name_end..].to_string()),
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(
            fields.next().unwrap_or_else(|| panic!("no value: {line}")),
            line,
        );
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
        }
        assert!(fields.next().is_none(), "trailing fields: {line}");
        let family = types
            .iter()
            .find(|(f, kind)| sample_names(f, kind).iter().any(|n| n == name))
            .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        if family.1 == "histogram" && name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "bucket without le: {line}");
        }
        assert!(
            seen.insert((name.to_string(), labels.clone())),
            "series twice: {line}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Exposition { types, samples }
}

impl Exposition {
    /// The value of the series `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like `value`, 0 for a series not there yet.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every metric name a query can select: the names of the samples and
    /// the names the declared families give theirs.
    fn names(&self) -> BTreeSet<String> {
        self.types
            .iter()
            .flat_map(|(f, kind)| sample_names(f, kind))
            .chain(self.samples.iter().map(|s| s.name.clone()))
            .collect()
    }
}

/// GETs `url` and parses it; asserts the Prometheus text content type.
async fn scrape_url(url: &str) -> Exposition {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype}"
    );
    parse_exposition(&r.text().await.unwrap())
}

async fn scrape(s: &Server) -> Exposition {
    scrape_url(&s.url("/metrics")).await
}

/// Scrapes until `ready` holds (maintenance and backups run in the
/// background), for at most a minute.
async fn scrape_until(s: &Server, what: &str, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(s).await;
        if ready(&m) {
            return m;
        }
        assert!(Instant::now() < until, "no {what} within a minute: {m:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn the_parser_accepts_the_format_and_refuses_what_is_not() {
    let m = parse_exposition(
        "# HELP a_total A.\n# TYPE a_total counter\na_total{route=\"/x/{id}\",code=\"200\"} 3\n\
         # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n\
         # TYPE g gauge\ng{v=\"q\\\"uote\"} -1.5e3\n",
    );
    assert_eq!(
        m.value("a_total", &[("route", "/x/{id}"), ("code", "200")]),
        Some(3.0)
    );
    assert_eq!(m.value("g", &[("v", "q\"uote")]), Some(-1500.0));
    assert!(m.names().contains("h_bucket") && m.names().contains("h_count"));
    for bad in [
        "undeclared 1\n",
        "# TYPE x gauge\nx\n",
        "# TYPE x gauge\nx{a=\"1\"} one\n",
        "# TYPE x gauge\nx{a=1} 1\n",
        "# TYPE x gauge\nx 1\nx 2\n",
        "# TYPE h histogram\nh_bucket 1\n",
    ] {
        let text = bad.to_string();
        assert!(
            std::panic::catch_unwind(|| parse_exposition(&text)).is_err(),
            "accepted {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Counters, seal state, labels

#[tokio::test]
async fn counters_follow_requests_and_the_seal_state_follows_ignition() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let signer = a.client("signer", "sign");
    let s = a.serve(&[]);
    let sign_ok = [("route", "/v1/sign"), ("code", "200")];
    let sign_sealed = [("route", "/v1/sign"), ("code", "503")];

    let m = scrape(&s).await;
    assert_eq!(m.value("orgkey_sealed", &[]), Some(1.0));
    assert_eq!(m.value("orgkey_token_up", &[]), Some(1.0));
    assert_eq!(m.value("orgkey_store_up", &[]), Some(1.0));
    assert_eq!(m.value("orgkey_token_sessions_in_use", &[]), Some(0.0));
    assert_eq!(m.count("orgkey_http_requests_total", &sign_sealed), 0.0);
    let rows_sealed = m.value("orgkey_audit_rows_total", &[]).unwrap();

    // Refused while sealed: counted under its status.
    let r = post(&s, "/v1/sign", &signer, b"data".to_vec()).await;
    assert_eq!(r.status(), 503);
    let m = scrape(&s).await;
    assert_eq!(m.types["orgkey_http_requests_total"], "counter");
    assert_eq!(m.types["orgkey_http_request_duration_seconds"], "histogram");
    assert_eq!(m.count("orgkey_http_requests_total", &sign_sealed), 1.0);
    assert_eq!(m.count("orgkey_http_requests_total", &sign_ok), 0.0);

    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let m = scrape(&s).await;
    assert_eq!(m.value("orgkey_sealed", &[]), Some(0.0));
    let before = m;

    let r = post(&s, "/v1/sign", &signer, b"data to sign".to_vec()).await;
    assert_eq!(r.status(), 200);
    let m = scrape(&s).await;
    assert_eq!(
        m.count("orgkey_http_requests_total", &sign_ok),
        before.count("orgkey_http_requests_total", &sign_ok) + 1.0
    );
    let signed = |m: &Exposition| {
        m.count(
            "orgkey_token_operation_duration_seconds_count",
            &[("operation", "sign")],
        )
    };
    assert!(signed(&m) > signed(&before), "C_Sign was measured");
    assert!(
        m.count(
            "orgkey_http_request_duration_seconds_count",
            &[("route", "/v1/sign")]
        ) >= 2.0
    );
    let rows = |m: &Exposition| m.value("orgkey_audit_rows_total", &[]).unwrap();
    assert!(
        rows(&m) > rows(&before) && rows(&before) > rows_sealed,
        "ignition and signature rows"
    );
    let commits = |m: &Exposition| m.count("orgkey_audit_commit_duration_seconds_count", &[]);
    assert!(commits(&m) > commits(&before));
    assert!(
        m.count(
            "orgkey_token_operation_duration_seconds_count",
            &[("operation", "login")]
        ) >= 1.0
    );

    // Sealing flips it back; a wrong passphrase is an ignition failure.
    let r = http()
        .delete(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = scrape(&s).await;
    assert_eq!(m.value("orgkey_sealed", &[]), Some(1.0));
    let bad = [("reason", "bad_passphrase")];
    assert_eq!(m.value("orgkey_ignition_failures_total", &bad), Some(0.0));
    assert_error(
        ignite(&s, &admin, "not the passphrase").await,
        401,
        "bad_passphrase",
    )
    .await;
    let m = scrape(&s).await;
    assert_eq!(m.value("orgkey_ignition_failures_total", &bad), Some(1.0));
    assert_eq!(m.value("orgkey_sealed", &[]), Some(1.0));
}

/// Route label values: templates (`/v1/users/{email}`), or `unmatched`.
fn assert_clean_labels(m: &Exposition, secrets: &[&str]) {
    for s in &m.samples {
        for (k, v) in &s.labels {
            let lower = v.to_ascii_lowercase();
            assert!(!v.contains('@'), "{} has an email in {k}={v:?}", s.name);
            for secret in secrets {
                assert!(
                    !lower.contains(&secret.to_ascii_lowercase()),
                    "{} carries {secret:?} in {k}={v:?}",
                    s.name
                );
            }
            if k == "route" {
                assert!(
                    v == "unmatched"
                        || (v.starts_with('/')
                            && v.split('/').all(|seg| {
                                seg.chars().all(|c| {
                                    c.is_ascii_lowercase() || "-_.{}0123456789".contains(c)
                                })
                            })),
                    "route label {v:?} is not a template"
                );
            }
        }
    }
}

#[tokio::test]
async fn no_label_carries_an_email_a_serial_or_a_fingerprint() {
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Example Org CA"],
        true,
    );
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");
    let issuer = a.client("issuer", "issue");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);

    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "ed25519", "1y", &[]);
    let r = post(&s, "/v1/certify", &gw, alice.export(&fpr)).await;
    assert_eq!(r.status(), 200);
    let r = http()
        .get(s.url("/v1/users/alice@example.com"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post(&s, "/v1/users/bob@example.com/activity", &gw, vec![]).await;
    assert_eq!(r.status(), 404);
    let r = get(&s, "/pks/lookup?op=get&search=alice@example.com").await;
    assert_eq!(r.status(), 200);
    // Paths that match no route, with an email and a fingerprint in them.
    assert_eq!(get(&s, "/v1/users/alice@example.com/x").await.status(), 404);
    assert_eq!(get(&s, &format!("/v1/keys/{fpr}")).await.status(), 404);

    let dir = a.dir.path();
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            "alice.key",
            "-out",
            "alice.csr",
            "-subj",
            "/CN=Alice/emailAddress=alice@example.com",
        ],
    );
    let csr = std::fs::read(dir.join("alice.csr")).unwrap();
    let r = post(&s, "/v1/x509/issue", &issuer, csr).await;
    assert_eq!(r.status(), 201);
    let serial = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
    let r = http()
        .get(s.url(&format!("/v1/x509/certs/{serial}")))
        .bearer_auth(&issuer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let m = scrape(&s).await;
    let req = |route: &str, code: &str| {
        m.count(
            "orgkey_http_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(req("/v1/certify", "200"), 1.0);
    assert_eq!(req("/v1/users/{email}", "200"), 1.0);
    assert_eq!(req("/v1/users/{email}/activity", "404"), 1.0);
    assert_eq!(req("/pks/lookup", "200"), 1.0);
    assert_eq!(req("/v1/x509/issue", "201"), 1.0);
    assert_eq!(req("/v1/x509/certs/{serial}", "200"), 1.0);
    assert_eq!(req("unmatched", "404"), 2.0);
    let org_fpr = get_json(&s, "/v1/status").await["org_key"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_clean_labels(
        &m,
        &[&serial, &fpr, &org_fpr, "alice", "bob", "example.com"],
    );
}

// ---------------------------------------------------------------------------
// Expiry dates and the alert rules

/// Unix seconds of an RFC 3339 time (`2026-12-04T04:13:09Z`, or openssl's
/// `2026-12-04 04:13:09Z`).
fn unix(t: &str) -> f64 {
    let t = humantime::parse_rfc3339(&t.trim().replacen(' ', "T", 1)).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

/// `field=VALUE` from openssl's output.
fn openssl_field(out: &str, field: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {out}"))
        .to_string()
}

#[tokio::test]
async fn expiry_gauges_are_what_org_key_show_and_openssl_read_and_the_alert_rules_name_them() {
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Example Org CA"],
        true,
    );
    // Ignited from the start: maintenance (which makes the CRL) and the
    // first state backup run at once.
    let pin = a.pin_file.to_str().unwrap().to_string();
    let s = a.serve(&["--ignition-passphrase-file", &pin]);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // On a PostgreSQL store scheduled state backups are off unless set
    // (docs/cluster.md).
    let mut timestamps = vec!["orgkey_maintenance_last_success_timestamp_seconds"];
    if !on_postgres() {
        timestamps.push("orgkey_backup_last_success_timestamp_seconds");
    }
    let m = scrape_until(&s, "maintenance run, backup and CRL", |m| {
        timestamps
            .iter()
            .chain(&["orgkey_crl_next_update_timestamp_seconds"])
            .all(|n| m.value(n, &[]).is_some())
    })
    .await;
    for n in timestamps {
        let at = m.value(n, &[]).unwrap();
        assert!(
            (started - 60.0..started + 120.0).contains(&at),
            "{n} = {at}, started at {started}"
        );
    }

    let show = a.ok(&["org-key", "show"], false);
    let expires = show
        .lines()
        .find_map(|l| l.strip_prefix("expires:"))
        .unwrap_or_else(|| panic!("no expiry in {show}"));
    assert_eq!(
        m.value("orgkey_org_key_expiry_timestamp_seconds", &[]),
        Some(unix(expires)),
        "{show}"
    );

    let dir = a.dir.path();
    let r = get(&s, "/v1/org-cert?format=der").await;
    std::fs::write(dir.join("org.der"), r.bytes().await.unwrap()).unwrap();
    let out = openssl_ok(
        dir,
        &[
            "x509", "-inform", "DER", "-in", "org.der", "-noout", "-enddate", "-dateopt",
            "iso_8601",
        ],
    );
    assert_eq!(
        m.value("orgkey_org_cert_expiry_timestamp_seconds", &[]),
        Some(unix(&openssl_field(&out, "notAfter")))
    );
    let r = get(&s, "/v1/x509/crl").await;
    assert_eq!(r.status(), 200);
    std::fs::write(dir.join("org.crl"), r.bytes().await.unwrap()).unwrap();
    let out = openssl_ok(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "org.crl",
            "-noout",
            "-nextupdate",
            "-dateopt",
            "iso_8601",
        ],
    );
    assert_eq!(
        m.value("orgkey_crl_next_update_timestamp_seconds", &[]),
        Some(unix(&openssl_field(&out, "nextUpdate")))
    );

    // Every metric the alert rules name is one this appliance exposes, and
    // they cover what docs/operations.md promises.
    let exposed = m.names();
    let rules = alert_rules();
    let mut named = BTreeSet::new();
    for (alert, expr) in &rules {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert} names no metric: {expr}");
        for n in names {
            // Scheduled backups of a PostgreSQL store are off by default.
            if on_postgres() && n.starts_with("orgkey_backup_") {
                named.insert(n);
                continue;
            }
            assert!(
                exposed.contains(&n) || PROMETHEUS_SERIES.contains(&n.as_str()),
                "alert {alert} names {n}, which /metrics does not expose: {expr}"
            );
            named.insert(n);
        }
    }
    for promised in [
        "orgkey_org_key_expiry_timestamp_seconds",
        "orgkey_org_cert_expiry_timestamp_seconds",
        "orgkey_crl_next_update_timestamp_seconds",
        "orgkey_token_up",
        "orgkey_maintenance_last_success_timestamp_seconds",
        "orgkey_backup_last_success_timestamp_seconds",
        "orgkey_ignition_failures_total",
    ] {
        assert!(named.contains(promised), "no alert rule watches {promised}");
    }
}

/// The series Prometheus itself adds to every target's scrape.
const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The fenced yaml block of docs/operations.md that holds the alert rules
/// (the one with `groups:`), as (alert, expr) pairs; asserts the rule file
/// shape Prometheus reads.
fn alert_rules() -> Vec<(String, String)> {
    use yaml_rust2::{Yaml, YamlLoader};
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    let rules_blocks: Vec<&String> = blocks.iter().filter(|b| b.starts_with("groups:")).collect();
    assert_eq!(
        rules_blocks.len(),
        1,
        "docs/operations.md has one alert rules block"
    );
    let docs = YamlLoader::load_from_str(rules_blocks[0]).expect("the alert rules are YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups: a list");
    assert!(!groups.is_empty());
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "a group without a name");
        for r in g["rules"].as_vec().expect("rules: a list") {
            let hash = r.as_hash().expect("a rule is a mapping");
            for key in hash.keys() {
                let key = key.as_str().unwrap_or_default();
                assert!(
                    ["alert", "expr", "for", "labels", "annotations"].contains(&key),
                    "unknown rule key {key}"
                );
            }
            let alert = r["alert"].as_str().expect("alert: a name").to_string();
            assert!(is_name(&alert, false), "alert name {alert}");
            assert!(names.insert(alert.clone()), "alert {alert} twice");
            let expr = r["expr"].as_str().expect("expr: a string").to_string();
            if let Yaml::String(d) = &r["for"] {
                let digits = d.trim_end_matches(['s', 'm', 'h', 'd']);
                assert!(
                    !digits.is_empty() && digits.len() < d.len() && digits.parse::<u32>().is_ok(),
                    "{alert}: for: {d}"
                );
            } else {
                assert!(r["for"].is_badvalue(), "{alert}: for: a duration");
            }
            for key in ["labels", "annotations"] {
                if let Some(h) = r[key].as_hash() {
                    assert!(h.values().all(|v| v.as_str().is_some()), "{alert}: {key}");
                }
            }
            out.push((alert, expr));
        }
    }
    out
}

/// Words of PromQL that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers (`{...}`), ranges (`[...]`) and the label lists
/// of `by`, `without`, `on`, `ignoring` and `group_*`, that are not
/// function calls or PromQL words.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut label_list_next = false;
    let skip_to = |i: usize, close: char| {
        let mut j = i + 1;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '\\') => j += 1,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                (None, _) => {}
            }
            j += 1;
        }
        panic!("unclosed {close} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '(' && label_list_next {
            label_list_next = false;
            i = skip_to(i, ')');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                label_list_next = true;
            } else if next != Some(&'(') && !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_rule_check_finds_the_metric_names_an_expression_selects() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (instance, job) (rate(orgkey_http_requests_total{code=~"5..", route!="/x"}[5m])) / on(instance) group_left(job) up > 0.05"#
        ),
        ["orgkey_http_requests_total", "up"]
    );
    assert_eq!(
        names("orgkey_org_key_expiry_timestamp_seconds - time() < 6 * 3600"),
        ["orgkey_org_key_expiry_timestamp_seconds"]
    );
    assert_eq!(
        names("(orgkey_sealed == 0) unless on(instance) orgkey_no_such_metric offset 1h"),
        ["orgkey_no_such_metric", "orgkey_sealed"]
    );
    assert_eq!(names(r#"absent(x{a="b}{"}) or vector(1e3)"#), ["x"]);
    // A rule naming a metric the appliance does not expose is caught.
    let exposed = parse_exposition("# TYPE orgkey_sealed gauge\norgkey_sealed 1\n").names();
    let unknown: Vec<String> =
        metric_names("(orgkey_sealed == 0) unless on(instance) orgkey_no_such_metric")
            .into_iter()
            .filter(|n| !exposed.contains(n))
            .collect();
    assert_eq!(unknown, ["orgkey_no_such_metric"]);
}

// ---------------------------------------------------------------------------
// [metrics] listen

#[tokio::test]
async fn metrics_listen_serves_metrics_only_on_its_own_port() {
    let a = Appliance::new();
    a.set_config("metrics.listen", "127.0.0.1:0");
    let s = a.serve(&[]);
    let metrics_url = s
        .metrics_url
        .clone()
        .expect("serve announces the metrics address");
    assert!(metrics_url.ends_with("/metrics"), "{metrics_url}");
    assert_ne!(
        metrics_url.trim_end_matches("/metrics"),
        s.url,
        "a port of its own"
    );

    // Not on the API listener any more.
    assert_error(get(&s, "/metrics").await, 404, "not_found").await;
    assert_eq!(get(&s, "/v1/health").await.status(), 200);

    let m = scrape_url(&metrics_url).await;
    assert_eq!(m.value("orgkey_sealed", &[]), Some(1.0));
    // The API listener's requests are counted in the same process.
    let req = |m: &Exposition, route: &str, code: &str| {
        m.count(
            "orgkey_http_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(req(&m, "/v1/health", "200"), 1.0);
    assert_eq!(req(&m, "/metrics", "404"), 0.0);
    assert_eq!(req(&m, "unmatched", "404"), 1.0);

    // The metrics listener serves nothing else.
    let base = metrics_url.trim_end_matches("/metrics");
    let r = http()
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let r = http().post(&metrics_url).send().await.unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let m = scrape_url(&metrics_url).await;
    assert_eq!(req(&m, "/metrics", "200"), 1.0);
    s.stop();
}

#[test]
fn a_taken_metrics_address_fails_the_start() {
    let a = Appliance::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    a.set_config("metrics.listen", addr.as_str());
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ORGKEY_CONFIG", &a.config)
        .env("ORGKEY_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("serve started although [metrics] listen {addr} is taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("binding [metrics] listen {addr}")),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the API listener never started"
    );
}
