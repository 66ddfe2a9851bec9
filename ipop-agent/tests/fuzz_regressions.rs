//! Replays every input kept under fuzz/regressions/<target>/ through its fuzz target's
//! property (`ipop_agent::fuzzing`). `cargo xtask fuzz` copies each crash it finds there, so
//! a crash, once fixed, stays fixed. Each target also keeps hand-picked edge cases.

use std::{fs, path::PathBuf};

use ipop_agent::fuzzing::TARGETS;

#[test]
fn every_kept_input_passes_its_property() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for (name, check) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no inputs kept for {name}", dir.display());
        for input in inputs {
            let data = fs::read(&input).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{name}: {} breaks the property", input.display());
            }
        }
    }
}
