//! The workflow parser and checker (`keel check`): any text, YAML or not, gives a workflow or
//! diagnostics, never a panic, and every diagnostic renders against the source it points into.
#![no_main]

use keel_core::workflow::parser::check_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(source) = std::str::from_utf8(bytes) else {
        return;
    };
    // No base folder: a `schema_file` is reported, never read, so the target does no IO.
    let checked = check_str(source, "fuzz.yaml", None);
    assert!(
        checked.workflow.is_some() || checked.diagnostics.iter().any(|d| d.is_error()),
        "a workflow was refused without an error diagnostic"
    );
    for diagnostic in &checked.diagnostics {
        assert!(
            diagnostic.line >= 1 && diagnostic.column >= 1,
            "{diagnostic:?}"
        );
        let _ = diagnostic.render(source);
    }
});
