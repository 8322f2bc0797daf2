//! The Debian mirror the container images are built from is the one this
//! machine's apt configuration names (scripts/lib/apt-sources.sh, used by
//! scripts/images.sh): its entries for this release's suites, in one-line and
//! deb822 form, and nothing else.

use std::path::Path;
use std::process::Command;

fn sources(etc: &Path, suite: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1"; orgkey_host_debian_sources "$2""#)
        .arg("bash")
        .arg(root.join("scripts/lib/apt-sources.sh"))
        .arg(suite)
        .env("ORGKEY_APT_ETC", etc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_this_releases_entries_are_taken_from_both_formats() {
    let etc = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("sources.list.d")).unwrap();
    std::fs::write(
        etc.path().join("sources.list"),
        "# a comment\n\
         deb http://mirror.example/debian bookworm main contrib\n\
         deb-src http://mirror.example/debian bookworm main\n\
         deb [arch=amd64 signed-by=/usr/share/keyrings/local.gpg] http://mirror.example/debian bookworm-updates main # trailing\n\
         deb http://archive.example/ubuntu jammy main\n\
         deb http://old.example/debian bullseye main\n",
    )
    .unwrap();
    std::fs::write(
        etc.path().join("sources.list.d/debian.sources"),
        "Types: deb\n\
         URIs: http://deb.example/debian-security\n\
         Suites: bookworm-security\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
         \n\
         Types: deb\n\
         URIs: http://disabled.example/debian\n\
         Suites: bookworm\n\
         Components: main\n\
         Enabled: no\n\
         \n\
         Types: deb-src\n\
         URIs: http://src.example/debian\n\
         Suites: bookworm\n\
         Components: main\n\
         \n\
         Types: deb\n\
         URIs: https://vendor.example/apt\n\
         Suites: nodistro\n\
         Components: main\n",
    )
    .unwrap();
    std::fs::write(
        etc.path().join("sources.list.d/ignored.list.save"),
        "deb http://x/ bookworm main\n",
    )
    .unwrap();

    let out = sources(etc.path(), "bookworm");
    assert_eq!(
        out,
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main contrib\n\n\
         Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-updates\nComponents: main\n\
         Signed-By: /usr/share/keyrings/local.gpg\n\n\
         Types: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
    );
    // Another release finds only its own line.
    assert_eq!(
        sources(etc.path(), "bullseye"),
        "Types: deb\nURIs: http://old.example/debian\nSuites: bullseye\nComponents: main\n\n"
    );
    // No entry for the release: nothing (scripts/images.sh then refuses).
    assert_eq!(sources(etc.path(), "trixie"), "");
}

#[test]
fn an_apt_configuration_without_sources_gives_nothing() {
    let etc = tempfile::tempdir().unwrap();
    assert_eq!(sources(etc.path(), "bookworm"), "");
}
