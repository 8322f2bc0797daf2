//! The examples users read, run against real appliances so that they cannot
//! drift from the code: the "Typical first run" of `orgkey --help`, every
//! `sh` block of README.md and docs/api.md (taken from the files at test
//! time, in document order), and every line of README's Commands table,
//! parsed by the CLI's own clap definition.
//!
//! How a block runs: in bash (`set -euo pipefail`) in the work directory of
//! its appliance, where
//! - `orgkey` is this build, given the secret files it would otherwise
//!   prompt for (every option whose help says "instead of prompting") and,
//!   for `init`, a free port (`--listen`) and the suite's token profile;
//! - `curl` fails on an HTTP error status (`--fail-with-body`), so an example
//!   that gets a 4xx or 5xx fails;
//! - placeholders are replaced: `/srv/orgkey` by a temp dir, `127.0.0.1:8443`
//!   by the server's address, `FINGERPRINT` by a user's key, `5f0c…` by the
//!   serial the issuance example got; `$ORGKEY`, `$TOKEN`, `$GW_TOKEN`,
//!   `$ISSUE_TOKEN`, `$REVOKE_TOKEN`, `$ADMIN_TOKEN` and `$FPR` are set to the
//!   server, clients with the scopes docs/api.md names, and that user's key;
//! - `orgkey serve &` is followed by waiting until the server answers, and
//!   whatever a block started is stopped when it ends.
//!
//! An HTML comment on the line before a fence marks a block that cannot run
//! as it is:
//! - `<!-- example: skip: REASON -->`: not run (it needs what a test does not
//!   have: a vendor HSM, a TLS certificate, a terminal, root);
//! - `<!-- example: syntax -->`: a command template with `[optional]` parts,
//!   checked by the CLI's parser, with and without them;
//! - `<!-- example: fails: "TEXT", ... -->`: must fail, printing each TEXT.

mod common;
use clap::CommandFactory;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Finding the examples

#[derive(Debug, Clone, PartialEq)]
enum Mark {
    Run,
    Skip,
    Syntax,
    Fails(Vec<String>),
}

#[derive(Debug, Clone)]
struct Block {
    /// `README.md:42`
    at: String,
    /// The heading the block is under.
    section: String,
    code: String,
    mark: Mark,
}

fn parse_mark(at: &str, text: &str) -> Mark {
    if text == "syntax" {
        return Mark::Syntax;
    }
    if let Some(reason) = text.strip_prefix("skip:") {
        assert!(
            !reason.trim().is_empty(),
            "{at}: a skipped example says why"
        );
        return Mark::Skip;
    }
    if let Some(texts) = text.strip_prefix("fails:") {
        let texts: Vec<String> = texts
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        assert!(!texts.is_empty(), "{at}: `fails:` names what it prints");
        return Mark::Fails(texts);
    }
    panic!("{at}: unknown example mark {text:?}");
}

/// Every fenced `sh` block of `doc` with its mark. A mark must sit on the
/// line right before a fence, and only `sh` blocks are examples.
fn sh_blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(doc)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut mark: Option<(usize, Mark)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let at = format!("{doc}:{}", i + 1);
        if let Some(m) = line.trim().strip_prefix("<!-- example:") {
            let m = m
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("{at}: an example mark is one line"));
            assert!(mark.is_none(), "{at}: two marks in a row");
            mark = Some((i, parse_mark(&at, m.trim())));
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            let indent = line.len() - line.trim_start().len();
            let start = i;
            let mut code = String::new();
            i += 1;
            while !lines[i].trim_start().starts_with("```") {
                code.push_str(lines[i].get(indent..).unwrap_or("").trim_end());
                code.push('\n');
                i += 1;
            }
            let m = match mark.take() {
                Some((m_at, m)) => {
                    assert_eq!(
                        m_at + 1,
                        start,
                        "{doc}:{}: mark not before a fence",
                        m_at + 1
                    );
                    assert_eq!(lang, "sh", "{at}: only sh blocks are examples");
                    m
                }
                None => Mark::Run,
            };
            if lang == "sh" {
                blocks.push(Block {
                    at,
                    section: section.clone(),
                    code,
                    mark: m,
                });
            }
        } else {
            if line.starts_with('#') {
                section = line.to_string();
            }
            if let Some((m_at, _)) = &mark {
                panic!("{doc}:{}: mark not before a fence", m_at + 1);
            }
        }
        i += 1;
    }
    blocks
}

/// The "Typical first run" of `orgkey --help`.
fn help_first_run() -> String {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let lines = help
        .lines()
        .skip_while(|l| l.trim() != "Typical first run:")
        .skip(1);
    let mut code = String::new();
    for l in lines.take_while(|l| l.starts_with("  ")) {
        code.push_str(l.trim());
        code.push('\n');
    }
    assert!(code.contains("orgkey init"), "no first run in:\n{help}");
    code
}

// ---------------------------------------------------------------------------
// Running them

/// Secret files, and which options of which command take them: every
/// option whose help says it replaces a prompt.
struct Secrets {
    /// command path ("org-key generate") -> options and files
    by_command: BTreeMap<String, Vec<(String, PathBuf)>>,
}

impl Secrets {
    fn new(dir: &Path, passphrase_file: &Path) -> Secrets {
        let file = |name: &str, value: &str| {
            let p = dir.join(name);
            write_secret(&p, value);
            p
        };
        let so = file("so-pin", SO_PIN);
        let backup = file("backup-passphrase", "a long backup passphrase 42");
        let new = file("new-passphrase", "a brand new passphrase");
        let mut by_command = BTreeMap::new();
        fn walk(
            cmd: &clap::Command,
            path: &str,
            pick: &dyn Fn(&str) -> PathBuf,
            out: &mut BTreeMap<String, Vec<(String, PathBuf)>>,
        ) {
            let options: Vec<(String, PathBuf)> = cmd
                .get_arguments()
                .filter(|a| {
                    a.get_help()
                        .is_some_and(|h| h.to_string().contains("instead of prompting"))
                })
                .map(|a| {
                    let long = a.get_long().expect("a long option");
                    (format!("--{long}"), pick(long))
                })
                .collect();
            if !options.is_empty() {
                out.insert(path.trim().to_string(), options);
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), pick, out);
            }
        }
        let pick = |long: &str| match long {
            "passphrase-file" | "ignition-passphrase-file" => passphrase_file.to_path_buf(),
            "so-pin-file" => so.clone(),
            "backup-passphrase-file" => backup.clone(),
            "new-passphrase-file" => new.clone(),
            other => panic!("no test secret for --{other}"),
        };
        walk(&orgkey::cli::Cli::command(), "", &pick, &mut by_command);
        assert!(by_command.contains_key("init") && by_command.contains_key("ignite"));
        Secrets { by_command }
    }
}

/// A bash environment for the examples of one appliance.
struct Shell {
    work: PathBuf,
    env: Vec<(String, String)>,
    /// Text replacements applied to every block.
    replace: Vec<(String, String)>,
    /// `orgkey` and `curl` wrappers.
    prelude: String,
}

impl Shell {
    fn new(work: &Path, secrets: &Secrets, url: &str, init_extra: &[String]) -> Shell {
        let mut table = String::new();
        for (cmd, options) in &secrets.by_command {
            let mut words: Vec<String> = options
                .iter()
                .flat_map(|(o, f)| [o.clone(), f.display().to_string()])
                .collect();
            if cmd == "init" {
                words.extend(init_extra.iter().cloned());
            }
            table.push_str(&format!("  [{cmd:?}]={:?}\n", words.join(" ")));
        }
        let prelude = format!(
            r#"set -euo pipefail
declare -A __extra=(
{table})
# This build, with the options that replace its prompts (unless given).
orgkey() {{
  local key="" n words=() extra=() i
  for n in 3 2 1; do
    if [ $# -ge $n ] && [ -n "${{__extra["${{*:1:$n}}"]+x}}" ]; then key="${{*:1:$n}}"; break; fi
  done
  if [ -n "$key" ]; then
    read -ra words <<< "${{__extra[$key]}}"
    for ((i = 0; i < ${{#words[@]}}; i += 2)); do
      case " $* " in
        *" ${{words[i]}} "* | *" ${{words[i]}}="*) ;;
        *) extra+=("${{words[i]}}" "${{words[i+1]}}") ;;
      esac
    done
  fi
  "$__orgkey_bin" "$@" "${{extra[@]}}"
}}
# An HTTP error status fails the example.
curl() {{
  local a
  for a in "$@"; do
    case "$a" in --fail*|-[a-zA-Z]*f*) command curl "$@"; return ;; esac
  done
  command curl --fail-with-body "$@"
}}
__wait_for_serve() {{
  for _ in $(seq 200); do
    command curl -s -o /dev/null "{url}/v1/health" && return 0
    sleep 0.05
  done
  echo "orgkey serve did not answer at {url}" >&2
  return 1
}}
"#
        );
        Shell {
            work: work.to_path_buf(),
            env: vec![
                ("__orgkey_bin".into(), bin().into()),
                ("ORGKEY_LOG".into(), "warn".into()),
                ("GNUPGHOME".into(), work.join("gnupg").display().to_string()),
            ],
            replace: Vec::new(),
            prelude,
        }
    }

    /// Runs `code` after `setup` (test-side preparation, not an example);
    /// returns whether it succeeded and everything it printed.
    fn run(&self, at: &str, setup: &str, code: &str, stdin: Option<&str>) -> (bool, String) {
        let mut code = code.to_string();
        for (from, to) in &self.replace {
            code = code.replace(from, to);
        }
        let code: String = code
            .lines()
            .map(|l| {
                let cmd = l.split(" #").next().unwrap().trim();
                if cmd.starts_with("orgkey serve") && cmd.ends_with('&') {
                    format!("{l}\n__wait_for_serve\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let script = self.work.join("example.sh");
        std::fs::write(&script, format!("{}{setup}\n{code}", self.prelude)).unwrap();
        let log = self.work.join("example.out");
        let out = std::fs::File::create(&log).unwrap();
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("bash")
            .arg(&script)
            .current_dir(&self.work)
            .env_remove("ORGKEY_CONFIG")
            .env_remove("ORGKEY_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            let mut si = child.stdin.take().unwrap();
            si.write_all(input.as_bytes()).unwrap();
        }
        let pgid = child.id();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed() > Duration::from_secs(120) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever the block left running (orgkey serve &) stops with it.
        stop_group(pgid);
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(s) => (s.success(), output),
            None => panic!("{at}: the example did not finish within 120 s:\n{output}"),
        }
    }

    /// Runs a block as its mark says and asserts the outcome.
    fn check(&self, b: &Block, setup: &str, stdin: Option<&str>) {
        match &b.mark {
            Mark::Skip => {}
            Mark::Syntax => {
                for line in b.code.lines() {
                    let line = line.split(" #").next().unwrap().trim();
                    if !line.is_empty() {
                        check_syntax(&b.at, line);
                    }
                }
            }
            Mark::Run => {
                let (ok, out) = self.run(&b.at, setup, &b.code, stdin);
                assert!(
                    ok,
                    "{} ({}) failed:\n{}\n---\n{out}",
                    b.at, b.section, b.code
                );
            }
            Mark::Fails(texts) => {
                let (ok, out) = self.run(&b.at, setup, &b.code, stdin);
                assert!(!ok, "{}: documented to fail, but succeeded:\n{out}", b.at);
                for t in texts {
                    assert!(out.contains(t.as_str()), "{}: {t:?} not in:\n{out}", b.at);
                }
            }
        }
    }
}

/// SIGTERM to a process group (orgkey serve seals and stops), SIGKILL if it
/// is still there after 15 s.
fn stop_group(pgid: u32) {
    let group = format!("-{pgid}");
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, "--", &group])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    if !signal("-TERM") {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if !signal("-0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-KILL");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A shell for examples that set up an appliance from nothing (`orgkey
/// init --data-dir /srv/orgkey ...`) in a temp dir of their own.
fn fresh_shell(dir: &Path) -> Shell {
    let pin = dir.join("passphrase");
    write_secret(&pin, PASSPHRASE);
    let secrets = Secrets::new(dir, &pin);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut init = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    init.extend(token_init_args());
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("gnupg")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.join("gnupg"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut sh = Shell::new(&work, &secrets, &url, &init);
    sh.replace.push((
        "/srv/orgkey".into(),
        dir.join("srv/orgkey").display().to_string(),
    ));
    sh
}

/// The example set up an appliance with an org key and ignited it.
fn assert_ignited(dir: &Path) {
    let cfg = dir.join("srv/orgkey/orgkey.toml");
    assert!(cfg.exists(), "the example made no appliance");
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .env("ORGKEY_CONFIG", &cfg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["org-key", "show"]).contains("Example Org Key <orgkey@example.com>"));
    let audit = run(&["audit", "list"]);
    assert!(audit.contains("\tignition\tok"), "{audit}");
}

#[test]
fn the_first_run_in_orgkey_help_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sh = fresh_shell(dir.path());
    let code = help_first_run();
    // The admin token it ignites with is the one it wrote.
    assert!(code.contains("--token-out admin.token"), "{code}");
    let b = Block {
        at: "orgkey --help".into(),
        section: "Typical first run".into(),
        code,
        mark: Mark::Run,
    };
    sh.check(&b, "", None);
    assert_ignited(dir.path());
}

#[test]
fn the_readme_examples_run() {
    let dir = tempfile::tempdir().unwrap();
    let sh = fresh_shell(dir.path());
    let blocks = sh_blocks("README.md");
    assert!(
        blocks
            .iter()
            .any(|b| b.section == "## Setting up an appliance" && b.mark == Mark::Run),
        "README's set-up example runs"
    );
    for b in &blocks {
        sh.check(b, "", None);
    }
    assert_ignited(dir.path());
}

// ---------------------------------------------------------------------------
// docs/api.md against one appliance

/// Test-side preparation before the examples of a section (the examples
/// are written to be read one route at a time, not run top to bottom).
fn api_setup(section: &str) -> &'static str {
    match section {
        // The example ignites; the appliance is ignited from the start: seal it.
        "### POST /v1/ignition" => {
            r#"command curl -sf -X DELETE -H "Authorization: Bearer $ADMIN_TOKEN" "$ORGKEY/v1/ignition" >/dev/null"#
        }
        // The seal example (### DELETE /v1/ignition) sealed it: ignite again.
        "### POST /v1/certify" => {
            r#"command curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' --data-binary "{\"passphrase\": \"$(cat "$PASSPHRASE_FILE")\"}" "$ORGKEY/v1/ignition" >/dev/null"#
        }
        // The removal example (### DELETE /v1/users/{email}) removed Alice.
        "### POST /v1/users/{email}/activity" => {
            r#""$__orgkey_bin" users restore alice@example.com >/dev/null"#
        }
        _ => "",
    }
}

#[tokio::test]
async fn the_api_examples_run_against_a_live_appliance() {
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Example Org CA"],
        true,
    );
    let tokens = [
        ("TOKEN", a.client("signer", "sign")),
        ("GW_TOKEN", a.client("gateway", "certify")),
        ("ISSUE_TOKEN", a.client("issuer", "issue")),
        ("REVOKE_TOKEN", a.client("revoker", "revoke")),
        ("ADMIN_TOKEN", a.client("admin", "admin")),
    ];
    let s = a.serve(&[]);
    let admin = &tokens[4].1;
    assert_eq!(ignite(&s, admin, PASSPHRASE).await.status(), 200);

    let work = a.path("work");
    std::fs::create_dir_all(&work).unwrap();
    // The user the examples name, with a NIST key (the S/MIME bridge needs one).
    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "nistp256", "1y", &[]);
    std::fs::write(work.join("data"), "The data to sign.\n").unwrap();
    std::fs::write(work.join("notes.txt"), "line one\r\nline two\n").unwrap();

    let secrets = Secrets::new(a.dir.path(), &a.pin_file);
    let mut sh = Shell::new(&work, &secrets, &s.url, &[]);
    sh.env
        .retain(|(k, _)| k != "GNUPGHOME" && k != "ORGKEY_CONFIG");
    sh.env.extend([
        ("GNUPGHOME".into(), alice.home.path().display().to_string()),
        ("ORGKEY_CONFIG".into(), a.config.display().to_string()),
        ("ORGKEY".into(), s.url.clone()),
        ("FPR".into(), fpr.clone()),
        ("PASSPHRASE_FILE".into(), a.pin_file.display().to_string()),
    ]);
    sh.env
        .extend(tokens.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let host = s.url.strip_prefix("http://").unwrap().to_string();
    sh.replace.extend([
        ("127.0.0.1:8443".to_string(), host),
        ("FINGERPRINT".to_string(), fpr.clone()),
    ]);

    let blocks = sh_blocks("docs/api.md");
    for section in [
        "### POST /v1/ignition",
        "### POST /v1/certify",
        "### POST /v1/users/{email}/activity",
    ] {
        assert!(
            blocks.iter().any(|b| b.section == section),
            "docs/api.md has no example under {section:?} any more: update api_setup"
        );
    }
    let mut ran = 0;
    for b in &blocks {
        let mut b = b.clone();
        if b.code.contains("5f0c…") {
            // The serial of the certificate the issuance example wrote.
            let serial = openssl_ok(&work, &["x509", "-in", "alice.pem", "-noout", "-serial"]);
            let serial = serial.trim().strip_prefix("serial=").unwrap().to_string();
            b.code = b.code.replace("5f0c…", &serial);
        }
        let stdin = b
            .code
            .contains("read -rs PASS")
            .then(|| format!("{PASSPHRASE}\n"));
        sh.check(&b, api_setup(&b.section), stdin.as_deref());
        ran += usize::from(b.mark == Mark::Run);
    }
    assert!(ran >= 15, "only {ran} examples ran");
    // What the examples did is what the appliance recorded.
    s.stop();
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let audit = a.ok(&["audit", "list", "--last", "200"], false);
    for op in [
        "\tsign\tok",
        "\tcertify\tok",
        "\tx509-issue\tok",
        "\tx509-revoke\tok",
    ] {
        assert!(audit.contains(op), "{op:?} not in:\n{audit}");
    }
    let clients = a.ok(&["client", "list"], false);
    assert!(
        clients.contains("ops\t") && !clients.contains("build-gw"),
        "{clients}"
    );
}

// ---------------------------------------------------------------------------
// Syntax: README's Commands table and `syntax` blocks, by the CLI's parser

/// Values for the placeholders of command templates whose type the parser
/// checks; any other placeholder stands for itself.
fn placeholder(word: &str) -> &str {
    match word {
        "N" => "3",
        "A" => "p256",
        "ADDR" => "127.0.0.1:8443",
        "R" => "keyCompromise",
        w => w,
    }
}

#[derive(Debug, Clone)]
enum Part {
    Word(String),
    Optional(Vec<Part>),
}

/// Shell-ish words; quotes group, `[` and `]` stand alone.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut quoted = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                quoted = true;
            }
            (None, '[' | ']') => {
                if !cur.is_empty() || quoted {
                    out.push(std::mem::take(&mut cur));
                    quoted = false;
                }
                out.push(c.to_string());
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || quoted {
                    out.push(std::mem::take(&mut cur));
                    quoted = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || quoted {
        out.push(cur);
    }
    out
}

/// Words into parts; `[...]` is optional, a trailing `...` (repeatable)
/// is dropped.
fn parts(words: &mut std::vec::IntoIter<String>) -> Vec<Part> {
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        match w.as_str() {
            "[" => out.push(Part::Optional(parts(words))),
            "]" => return out,
            "..." => {}
            _ => out.push(Part::Word(w.trim_end_matches("...").to_string())),
        }
    }
    out
}

/// Every argument list a template stands for: with all optional parts and
/// each alternative value (`a|b`), and with none of the optional parts.
fn expand(parts: &[Part], with_optional: bool) -> Vec<Vec<String>> {
    let mut lists = vec![Vec::new()];
    for p in parts {
        let choices: Vec<Vec<String>> = match p {
            Part::Word(w) if w.contains('|') && !w.starts_with('-') => w
                .split('|')
                .map(|v| vec![placeholder(v).to_string()])
                .collect(),
            Part::Word(w) => vec![vec![placeholder(w).to_string()]],
            Part::Optional(inner) if with_optional => expand(inner, true),
            Part::Optional(_) => vec![Vec::new()],
        };
        lists = lists
            .iter()
            .flat_map(|l| {
                choices.iter().map(move |c| {
                    let mut l = l.clone();
                    l.extend(c.iter().cloned());
                    l
                })
            })
            .collect();
    }
    lists
}

/// What the CLI refuses of `template` (an `orgkey ...` line) in the forms
/// it stands for.
fn syntax_errors(template: &str) -> Vec<String> {
    use clap::Parser;
    let ws = words(template);
    if ws.first().map(String::as_str) != Some("orgkey") {
        return vec![format!("{template}: not an orgkey command")];
    }
    let parts = parts(&mut ws.into_iter());
    let mut errors = Vec::new();
    for with_optional in [true, false] {
        for args in expand(&parts, with_optional) {
            if let Err(e) = orgkey::cli::Cli::try_parse_from(&args) {
                errors.push(format!("`{}`: {e}", args.join(" ")));
            }
        }
    }
    errors
}

fn check_syntax(at: &str, template: &str) {
    let errors = syntax_errors(template);
    assert!(
        errors.is_empty(),
        "{at}: not what the CLI takes:\n{}",
        errors.join("\n")
    );
}

/// The subcommand path of an `orgkey ...` argument list.
fn command_path(args: &[String]) -> Vec<String> {
    let mut cmd = orgkey::cli::Cli::command();
    let mut path = Vec::new();
    for w in &args[1..] {
        match cmd.find_subcommand(w) {
            Some(sub) => {
                path.push(w.clone());
                cmd = sub.clone();
            }
            None => break,
        }
    }
    path
}

/// README's Commands table as `orgkey ...` templates. A cell holds code
/// spans: a full command (`orgkey x y ...`), a sibling subcommand of the
/// previous one after ` / ` (`list`), another set of options for it after
/// ` or ` (`--key K.pem ...`), or options for every command before it when
/// the span follows directly (`[--url URL]`).
fn commands_table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = text
        .split("## Commands\n")
        .nth(1)
        .expect("README has a Commands section");
    let mut templates = Vec::new();
    for (n, row) in table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .enumerate()
    {
        let at = format!("README.md Commands row {}", n + 1);
        let cell = row[2..].split(" | ").next().unwrap();
        let spans: Vec<&str> = cell.split('`').collect();
        let mut row_templates: Vec<String> = Vec::new();
        for i in (1..spans.len()).step_by(2) {
            let span = spans[i].replace("\\|", "|");
            let sep = spans[i - 1];
            if span.starts_with("orgkey ") {
                row_templates.push(span);
            } else if span.starts_with('[') && sep.trim().is_empty() && !row_templates.is_empty() {
                for t in &mut row_templates {
                    t.push(' ');
                    t.push_str(&span);
                }
            } else {
                let prev = row_templates
                    .last()
                    .unwrap_or_else(|| panic!("{at}: {span:?} follows no command"));
                let path = command_path(&words(prev));
                let base = match (sep.trim(), span.starts_with('-')) {
                    ("or", true) => path.join(" "),
                    ("/", false) => path[..path.len() - 1].join(" "),
                    other => panic!("{at}: cannot read {other:?} before {span:?}"),
                };
                row_templates.push(format!("orgkey {base} {span}"));
            }
        }
        assert!(!row_templates.is_empty(), "{at}: no command in {row:?}");
        templates.extend(row_templates.into_iter().map(|t| (at.clone(), t)));
    }
    templates
}

#[test]
fn the_readme_commands_table_is_what_the_cli_takes() {
    let templates = commands_table();
    for (at, t) in &templates {
        check_syntax(at, t);
    }
    // Every command the CLI has is in the table.
    let listed: Vec<Vec<String>> = templates
        .iter()
        .map(|(_, t)| command_path(&words(t)))
        .collect();
    fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        if cmd.has_subcommands() {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                leaves(sub, p, out);
            }
        } else {
            out.push(path);
        }
    }
    let mut all = Vec::new();
    leaves(&orgkey::cli::Cli::command(), Vec::new(), &mut all);
    let missing: Vec<String> = all
        .iter()
        .filter(|c| !listed.contains(c))
        .map(|c| c.join(" "))
        .collect();
    assert!(
        missing.is_empty(),
        "README's Commands table lacks: {missing:?}"
    );
}

#[test]
fn the_syntax_checker_refuses_what_the_cli_refuses() {
    // The checker itself must be able to fail.
    for bad in [
        "orgkey org-key generate --uid X --algorithm dsa",
        "orgkey client add NAME",
        "orgkey ignite [--no-such-option]",
        "orgkey users list [--limit lots]",
        "orgkey backup export-keys --out [F]",
    ] {
        assert!(!syntax_errors(bad).is_empty(), "{bad} passed");
    }
    assert_eq!(
        syntax_errors("orgkey client add NAME --scopes LIST [--token-out F]"),
        Vec::<String>::new()
    );
}
