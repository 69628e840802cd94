//! The systemd units in `contrib/systemd` pass `systemd-analyze verify`, pointed at the
//! binary we built: no error, and no warning either (an unknown key is only a warning).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use btrfs2s3_tests::{TestEnv, unique_name};

const UNITS: &[&str] = &[
    "btrfs2s3.service",
    "btrfs2s3.timer",
    "btrfs2s3-daemon.service",
];

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let Some(env) = TestEnv::get("the_shipped_units_pass_systemd_analyze_verify") else {
        return;
    };
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let dir = env.btrfs.join(unique_name("units"));
    std::fs::create_dir(&dir).unwrap();
    let binary = support::binary().to_str().unwrap();
    for unit in UNITS {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        assert!(
            !unit.ends_with(".service") || text.contains("/usr/local/bin/btrfs2s3 "),
            "{unit} runs the installed binary"
        );
        std::fs::write(
            dir.join(unit),
            text.replace("/usr/local/bin/btrfs2s3", binary),
        )
        .unwrap();
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS)
        .current_dir(&dir)
        .output()
        .expect("systemd-analyze runs (cargo xtask installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");

    // The check has teeth: a misspelt key is reported.
    let daemon = std::fs::read_to_string(dir.join("btrfs2s3-daemon.service")).unwrap();
    std::fs::write(
        dir.join("btrfs2s3-daemon.service"),
        daemon.replace("Type=notify", "Tpye=notify"),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "btrfs2s3-daemon.service"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("Tpye"));
}
