//! The config parser and validation: never panics, whatever the text.
#![no_main]
use ipop_agent::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(settings) = Settings::from_json(text)
    {
        let _ = settings.resolve();
    }
});
