//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned; Node 22 from
//! npm) against agent-mcp's conformance client (`src/bin/mcp-conformance-client.rs`), for spec
//! versions 2025-11-25 and 2026-07-28, through `scripts/mcp-conformance.sh` (mock servers on
//! 127.0.0.1 only). `MCP_CONFORMANCE` (set by scripts/test.sh) says the suite is installed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[test]
fn the_conformance_suite_passes_for_both_spec_versions() {
    std::env::var("MCP_CONFORMANCE").unwrap_or_else(|_| {
        panic!("MCP_CONFORMANCE is not set: run scripts/test.sh, or export MCP_CONFORMANCE=$(scripts/mcp-servers.sh conformance)")
    });
    let out = tempfile::tempdir().expect("dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mcp-conformance.sh");
    let run = std::process::Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_mcp-conformance-client"))
        .env("AGENT_MCP_CONFORMANCE_OUT", out.path())
        .output()
        .expect("run the conformance script");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}\n{stderr}");
    // Both runs report every scenario passed: 19 for 2025-11-25, 33 for 2026-07-28.
    let runs: Vec<&str> = stdout.split("== spec ").skip(1).collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    for (run, (version, scenarios)) in runs.iter().zip([("2025-11-25", 19), ("2026-07-28", 33)]) {
        assert!(run.starts_with(version), "{run}");
        let passed = run.lines().filter(|l| l.starts_with("✓ ")).count();
        let failed = run.lines().filter(|l| l.starts_with("✗ ")).count();
        assert_eq!((passed, failed), (scenarios, 0), "{version}:\n{run}");
        let total = run
            .lines()
            .find(|l| l.starts_with("Total:"))
            .expect("a Total line");
        assert!(total.contains(" 0 failed"), "{total}");
    }
}
