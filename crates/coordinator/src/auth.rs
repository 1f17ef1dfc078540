//! The shared secret: created on first start in the data dir (mode 0600), compared in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use subtle::ConstantTimeEq;

/// The token file's name inside the data dir.
pub const TOKEN_FILE: &str = "token";

/// Reads the token from `dir/token`, creating it with 32 random bytes (hex) when missing.
/// Returns the token and the file's path.
pub fn load_or_create_token(dir: &Path) -> Result<(String, PathBuf)> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_string(), path)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read token file {}", path.display()));
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    f.write_all(token.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, path))
}

/// Compares a presented token with the secret in constant time.
pub fn token_matches(secret: &str, presented: &str) -> bool {
    secret.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path) = load_or_create_token(dir.path()).unwrap();
        let (b, _) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(token_matches(&a, &b));
        assert!(!token_matches(&a, "nope"));
        assert!(!token_matches(&a, ""));
    }
}
