//! The plugin configuration as Envoy hands it to the filter: any bytes.
//! Parsing never panics; what it accepts is a configuration the filter can
//! serve with (at least one deployment, each with a name and a path prefix).
#![no_main]

use coalmine_protocol::PluginConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = PluginConfig::parse(data) {
        assert!(!config.deployments.is_empty());
        for d in &config.deployments {
            assert!(!d.name.is_empty());
            assert!(d.matcher.path_prefix.starts_with('/'));
        }
    }
});
