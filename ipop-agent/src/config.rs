//! The agent's configuration: a JSON file (the seed's controller keys plus ours), every key
//! overridable on the command line. Pure: parsing and validation only.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Defaults, as documented in README.md.
pub const DEFAULT_BRIDGE: &str = "lxcbr0";
pub const DEFAULT_TAP: &str = "ipop";
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ipop";
pub const DEFAULT_ARP_MAX_AGE_SECS: u64 = 300;

/// Settings as given, in a file or on the command line; `None` means "not given here".
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The seed's key: ipop only does switch mode, so it must be 1 when present.
    pub switchmode: Option<u8>,
    /// The seed's inter-controller communication switch and port (the links' port).
    pub icc: Option<bool>,
    pub icc_port: Option<u16>,
    /// The bridge the TAP joins (the containers' bridge, `lxcbr0` in the seed).
    pub bridge: Option<String>,
    /// Name of the TAP device the agent creates.
    pub tap: Option<String>,
    /// Where the maps are pinned; default `/sys/fs/bpf/ipop/<bridge>`.
    pub pin_dir: Option<PathBuf>,
    /// Learned ARP entries older than this are no longer answered in the kernel (0: never).
    pub arp_max_age_secs: Option<u64>,
}

impl Settings {
    /// Parses a JSON config file's text. Unknown keys and wrong types are errors.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))
    }

    /// `self` with every key that `over` gives replaced by `over`'s value.
    pub fn overridden_by(self, over: Settings) -> Settings {
        Settings {
            switchmode: over.switchmode.or(self.switchmode),
            icc: over.icc.or(self.icc),
            icc_port: over.icc_port.or(self.icc_port),
            bridge: over.bridge.or(self.bridge),
            tap: over.tap.or(self.tap),
            pin_dir: over.pin_dir.or(self.pin_dir),
            arp_max_age_secs: over.arp_max_age_secs.or(self.arp_max_age_secs),
        }
    }

    /// Checks the settings together and fills in defaults.
    pub fn resolve(self) -> Result<AgentConfig, String> {
        if let Some(mode) = self.switchmode
            && mode != 1
        {
            return Err(format!(
                "switchmode {mode} is not supported: ipop only runs in switch mode (1)"
            ));
        }
        if self.icc == Some(false) && self.icc_port.is_some() {
            return Err("icc_port is set but icc is false: drop one of them".into());
        }
        if self.icc_port == Some(0) {
            return Err("icc_port must be 1..=65535".into());
        }
        let bridge = self.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        let tap = self.tap.unwrap_or_else(|| DEFAULT_TAP.into());
        check_ifname("bridge", &bridge)?;
        check_ifname("tap", &tap)?;
        if bridge == tap {
            return Err(format!(
                "bridge and tap are both {bridge:?}: the TAP is a port of the bridge"
            ));
        }
        let pin_dir = match self.pin_dir {
            Some(dir) if !dir.is_absolute() => {
                return Err(format!(
                    "pin_dir {} must be an absolute path",
                    dir.display()
                ));
            }
            Some(dir) => dir,
            None => PathBuf::from(DEFAULT_PIN_ROOT).join(&bridge),
        };
        let max_age = self.arp_max_age_secs.unwrap_or(DEFAULT_ARP_MAX_AGE_SECS);
        Ok(AgentConfig {
            bridge,
            tap,
            pin_dir,
            arp_max_age: Duration::from_secs(max_age),
            icc_port: if self.icc == Some(false) {
                None
            } else {
                self.icc_port
            },
        })
    }
}

/// A checked, complete configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub bridge: String,
    pub tap: String,
    pub pin_dir: PathBuf,
    pub arp_max_age: Duration,
    pub icc_port: Option<u16>,
}

/// The pin directory an agent on `bridge` uses unless told otherwise.
pub fn default_pin_dir(bridge: &str) -> PathBuf {
    PathBuf::from(DEFAULT_PIN_ROOT).join(bridge)
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_config_is_accepted() {
        let s =
            Settings::from_json(r#"{"switchmode": 1, "icc": true, "icc_port": 30000}"#).unwrap();
        let cfg = s.resolve().unwrap();
        assert_eq!(cfg.bridge, "lxcbr0");
        assert_eq!(cfg.tap, "ipop");
        assert_eq!(cfg.pin_dir, PathBuf::from("/sys/fs/bpf/ipop/lxcbr0"));
        assert_eq!(cfg.icc_port, Some(30000));
        assert_eq!(cfg.arp_max_age, Duration::from_secs(300));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file =
            Settings::from_json(r#"{"bridge": "br0", "tap": "ipop0", "arp_max_age_secs": 60}"#)
                .unwrap();
        let cli = Settings {
            bridge: Some("lxcbr0".into()),
            ..Default::default()
        };
        let cfg = file.overridden_by(cli).resolve().unwrap();
        assert_eq!(cfg.bridge, "lxcbr0");
        assert_eq!(cfg.tap, "ipop0");
        assert_eq!(
            cfg.pin_dir,
            PathBuf::from("/sys/fs/bpf/ipop/lxcbr0"),
            "pin dir follows the bridge"
        );
        assert_eq!(cfg.arp_max_age, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = Settings::from_json(r#"{"bridge": "br0", "brige": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `brige`"), "{e}");
        let e = Settings::from_json(r#"{"icc_port": "30000"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        assert!(Settings::from_json(r#"{"icc_port": 70000}"#).is_err());
        assert!(Settings::from_json("{").is_err());
        assert!(Settings::from_json("[]").is_err());
    }

    #[test]
    fn contradictions_are_errors() {
        let cases = [
            r#"{"switchmode": 0}"#,
            r#"{"icc": false, "icc_port": 30000}"#,
            r#"{"icc_port": 0}"#,
            r#"{"bridge": "br0", "tap": "br0"}"#,
            r#"{"bridge": "a/b"}"#,
            r#"{"tap": "averyveryverylongname"}"#,
            r#"{"tap": ""}"#,
            r#"{"pin_dir": "relative/dir"}"#,
        ];
        for case in cases {
            let s = Settings::from_json(case).unwrap();
            assert!(s.resolve().is_err(), "{case} accepted");
        }
    }
}
