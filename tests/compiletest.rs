//! Compile-time checks: every mistake the macros and the typed API catch has a failing case
//! with its expected message (`tests/ui/<area>/<rule>.rs` + `.stderr`), and the accepted
//! shapes compile (`tests/ui/pass`). The toolchain is pinned, so messages are stable;
//! regenerate with `TRYBUILD=overwrite cargo test --test compiletest` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/event/*.rs");
    t.compile_fail("tests/ui/aggregate/*.rs");
    t.compile_fail("tests/ui/stream/*.rs");
}
