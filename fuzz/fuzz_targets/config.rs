//! The TOML config: any text gives a config or a list of problems with lines, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = std::env::temp_dir();
    if let Err(d) = config::parse(text, &dir, "fuzz.toml") {
        assert!(!d.items.is_empty());
        let lines = text.lines().count().max(1);
        for item in &d.items {
            if let Some(line) = item.line {
                assert!(line <= lines + 1, "line {line} of {lines}");
            }
        }
    }
});
