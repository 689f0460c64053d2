//! Writes the data this release leaves behind, for later releases to prove
//! they read it: runs the scenario of `byok_tests::release_fixture` against
//! byok-local on the embedded store and on the AWS emulator, then keeps
//! the data directory (`OUT/embedded/`), a dump of the table and secrets
//! (`OUT/aws.json`) and what a reader should find (`OUT/keys.json`).
//!
//! `cargo build --workspace --bins && BYOK_TEST_AWS_ENDPOINT=… cargo run -p \
//!     byok-tests --example release_fixtures -- tests/fixtures/releases/NAME`

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a fixture writer: a failed step stops it"
)]

use byok_tests::release_fixture::{dump_aws, populate};
use byok_tests::stores::{Mode, start_with};
use byok_tests::upstream::StandIn;
use std::path::PathBuf;

#[tokio::main]
async fn main() {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        println!("usage: release_fixtures OUT_DIR");
        return;
    };
    let stand_in = StandIn::start().await;
    let mut expected = None;
    for mode in [Mode::Embedded, Mode::Aws] {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let (server, env) = start_with(mode, &stand_in, &data, &[]);
        let keys = populate(&server.base, |user| server.token(user, false)).await;
        let (status, _) = server.stop();
        assert!(status.success(), "byok-local stopped cleanly");
        match mode {
            Mode::Embedded => {
                let target = out.join("embedded");
                std::fs::create_dir_all(&target).unwrap();
                for entry in std::fs::read_dir(&data).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_file() {
                        std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
                    }
                }
            }
            Mode::Aws => {
                let var = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
                let dump = dump_aws(&var("BYOK_TABLE_NAME"), &var("BYOK_SECRET_PREFIX")).await;
                let json = serde_json::to_string_pretty(&dump).unwrap();
                std::fs::write(out.join("aws.json"), json + "\n").unwrap();
            }
        }
        expected = Some(keys);
    }
    let json = serde_json::to_string_pretty(&expected).unwrap();
    std::fs::write(out.join("keys.json"), json + "\n").unwrap();
    stand_in.shutdown().await;
    println!("fixtures written to {}", out.display());
}
