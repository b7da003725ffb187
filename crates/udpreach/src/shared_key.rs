//! Loading the shared secret for authenticated mode: `--key-file PATH`, else
//! the `UDPREACH_KEY` environment variable (handy for systemd credentials and
//! containers), else none. Errors name the path or the variable.

use crate::cli::KeyArgs;
use anyhow::{anyhow, bail};
use std::os::unix::fs::PermissionsExt;
use udpreach_wire::auth::SharedKey;

pub(crate) const KEY_ENV: &str = "UDPREACH_KEY";

pub(crate) fn load(args: &KeyArgs) -> anyhow::Result<Option<SharedKey>> {
    if let Some(path) = &args.key_file {
        let shown = path.display();
        let bytes =
            std::fs::read(path).map_err(|e| anyhow!("cannot read key file '{shown}': {e}"))?;
        let key = SharedKey::from_file_contents(bytes)
            .map_err(|_| anyhow!("key file '{shown}' is empty"))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!("key file '{shown}' is readable by other users (chmod 600 it)");
            }
        }
        if key.len() < 16 {
            tracing::warn!(
                "the key in '{shown}' is short ({} bytes); use 16 or more random bytes",
                key.len()
            );
        }
        return Ok(Some(key));
    }
    match std::env::var_os(KEY_ENV) {
        None => Ok(None),
        Some(v) => {
            let bytes = v.into_encoded_bytes();
            if bytes.is_empty() {
                bail!("{KEY_ENV} is set but empty (unset it, or give a key)");
            }
            Ok(Some(SharedKey::new(bytes).expect("checked non-empty")))
        }
    }
}
