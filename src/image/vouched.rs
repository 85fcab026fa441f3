//! Layers this registry hashed to their digest, each with the
//! [`Fingerprint`] its files had then: `vouched/<hex>` in the state dir,
//! named by the uncompressed tar's digest, holding the fingerprint's hex,
//! written atomically. The registry writes them; the containerd snapshotter
//! (another process, maybe started later) reads them, and makes a layer
//! from the store only while its files still have that fingerprint.

use crate::image::layer::tree::Fingerprint;
use crate::vocab::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Vouches {
    dir: PathBuf,
}

impl Vouches {
    /// The registry's side: the directory is made if missing.
    pub fn open(state_dir: &Path) -> std::io::Result<Vouches> {
        let dir = state_dir.join("vouched");
        std::fs::create_dir_all(&dir)?;
        Ok(Vouches { dir })
    }

    /// A reader's side: nothing is made.
    pub fn at(state_dir: &Path) -> Vouches {
        Vouches {
            dir: state_dir.join("vouched"),
        }
    }

    fn file(&self, diff_id: &str) -> Option<PathBuf> {
        Some(self.dir.join(Digest::parse(diff_id).ok()?.hex()))
    }

    /// The bytes of `diff_id` were hashed from files with `print`.
    pub fn record(&self, diff_id: &str, print: Fingerprint) -> std::io::Result<()> {
        let Some(file) = self.file(diff_id) else {
            return Ok(());
        };
        if self.get(diff_id) == Some(print) {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        writeln!(tmp, "{}", print.to_hex())?;
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    }

    pub fn get(&self, diff_id: &str) -> Option<Fingerprint> {
        Fingerprint::from_hex(&std::fs::read_to_string(self.file(diff_id)?).ok()?)
    }

    /// Bytes served for `diff_id` did not hash to it.
    pub fn withdraw(&self, diff_id: &str) {
        if let Some(file) = self.file(diff_id) {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl Vouches {
    /// `tar`'s bytes just hashed to `diff_id`, its files unchanged
    /// meanwhile: record its fingerprint. Blocking (a stat per file); a
    /// layer that is not generated has none, and a failure only costs the
    /// snapshotter a fetch.
    pub fn vouch_for(&self, diff_id: &str, tar: &crate::image::layer::LayerTar) {
        match tar.fingerprint() {
            Ok(Some(print)) => {
                tracing::debug!(diff_id, "vouched for a layer");
                if let Err(e) = self.record(diff_id, print) {
                    tracing::warn!(error = %e, diff_id, "cannot record a vouched layer");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, diff_id, "cannot fingerprint a layer"),
        }
    }
}
