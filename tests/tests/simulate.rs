//! `simulate` with a config: the policies of its pairs, the size and daily change its bucket's
//! backups show (real btrfs, moto).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use btrfs2s3_tests::TestEnv;
use support::Fixture;

#[test]
fn a_config_is_simulated_with_what_its_bucket_shows() {
    let Some(env) = TestEnv::get("a_config_is_simulated_with_what_its_bucket_shows") else {
        return;
    };
    let fixture = Fixture::new(env, "simconfig", &["moto"]);
    fixture.write_config("1y 1d", &[]);
    // Without backups there is nothing to measure: the error says what to give.
    let output = fixture.btrfs2s3(&["simulate", "--years", "1", "--every", "1d"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("give --size"), "{stderr}");

    // A full backup of 3 MB and, two seconds later, a differential of 1 MB.
    fixture.write("a", &vec![7u8; 3_000_000]);
    fixture.update(&[]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    fixture.write("b", &vec![8u8; 1_000_000]);
    fixture.update(&[]);
    let output = fixture.btrfs2s3(&[
        "simulate",
        "--years",
        "1",
        "--every",
        "1d",
        "--start",
        "2027-01-01",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1);
    assert!(
        outcomes[0]["label"].as_str().unwrap().ends_with("-> moto"),
        "{}",
        outcomes[0]["label"]
    );
    assert_eq!(outcomes[0]["preserve"], "1y 1d");
    assert_eq!(outcomes[0]["steps"], 365);
    // The full backup's size: the stream of 3 MB of data and its metadata.
    let peak = outcomes[0]["peak"]["bytes"].as_u64().unwrap();
    assert!(peak > 3_000_000, "{peak}");
    // A megabyte in two seconds is about 43 GB a day: every daily differential is as large
    // as the full backup.
    let uploaded = outcomes[0]["steady"]["bytes_uploaded_per_month"]
        .as_f64()
        .unwrap();
    assert!(uploaded > 25.0 * 3_000_000.0, "{uploaded}");
}
