//! The configuration file: defaults for the flags a person would otherwise type every time (the
//! coordinator's address, the token file, the namespace, the connect timeout). It is read from
//! `$TATZELWURM_CONFIG`, else `~/.config/tatzelwurm/config.toml`; flags and environment
//! variables win over it, and it wins over the built-in defaults.
//!
//! ```toml
//! coordinator = "node7"          # host, or host:port
//! token_file = "/etc/tatzelwurm/token"
//! namespace = "aiida-1234"
//! connect_timeout = "30s"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What the file may set; every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--coordinator`.
    pub coordinator: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--connect-timeout`, as a duration people write.
    pub connect_timeout: Option<String>,
}

/// Where the file is looked for.
pub fn path() -> Option<PathBuf> {
    match std::env::var_os("TATZELWURM_CONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => dirs::config_dir().map(|d| d.join("tatzelwurm").join("config.toml")),
    }
}

/// Reads the file at `path`: no file is an empty configuration; a file that cannot be read or
/// parsed is an error that names it.
pub fn load(path: Option<&Path>) -> Result<Config, String> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let cfg: Config =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if let Some(t) = &cfg.connect_timeout {
        tatzelwurm_protocol::cli::parse_duration(t)
            .map_err(|e| format!("{}: connect_timeout: {e}", path.display()))?;
    }
    Ok(cfg)
}

/// Makes the file's values the defaults of the command line's flags.
pub fn apply(mut cmd: clap::Command, cfg: &Config) -> clap::Command {
    // clap keeps defaults for the life of the process: one small leak per key set, once.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    if let Some(v) = &cfg.coordinator {
        let v = leak(v.clone());
        cmd = cmd.mut_arg("coordinator", |a| a.default_value(v));
    }
    if let Some(v) = &cfg.token_file {
        let v = leak(v.display().to_string());
        cmd = cmd.mut_arg("token_file", |a| a.default_value(v));
    }
    if let Some(v) = &cfg.namespace {
        let v = leak(v.clone());
        cmd = cmd.mut_arg("namespace", |a| a.default_value(v));
    }
    if let Some(v) = &cfg.connect_timeout {
        let v = leak(v.clone());
        cmd = cmd.mut_arg("connect_timeout", |a| a.default_value(v));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_empty_and_a_bad_one_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        assert_eq!(load(Some(&p)).unwrap(), Config::default());
        std::fs::write(&p, "coordinator = \"node7\"\nnamespace = \"x\"\n").unwrap();
        let cfg = load(Some(&p)).unwrap();
        assert_eq!(cfg.coordinator.as_deref(), Some("node7"));
        std::fs::write(&p, "coordinatr = \"node7\"\n").unwrap();
        let e = load(Some(&p)).unwrap_err();
        assert!(e.contains("config.toml") && e.contains("coordinatr"), "{e}");
        std::fs::write(&p, "connect_timeout = \"soon\"\n").unwrap();
        assert!(load(Some(&p)).unwrap_err().contains("connect_timeout"));
    }
}
