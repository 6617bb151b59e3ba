//! The last-good cache: the most recent configuration this proxy applied
//! from the control plane, on disk, so a restart while the control plane is
//! unreachable still serves it.
//!
//! Format: the magic `SNTLCACHE1\n`, the hex SHA-256 of the payload and a
//! newline, then the payload (an encoded `ResourceSet`). Writes go to a
//! temporary file that is fsynced and renamed over the old one (then the
//! directory is fsynced), so a crash leaves either the old or the new file.
//! A file whose checksum does not match is reported and never applied.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use sentinel_proto as pb;

const MAGIC: &[u8] = b"SNTLCACHE1\n";
const FILE: &str = "last-good.snapshot";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cached configuration in {0}")]
    Missing(PathBuf),
    #[error("cache file {0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
    #[error("cache file {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Atomically replaces the cached configuration.
pub fn store(dir: &Path, set: &pb::ResourceSet) -> Result<(), CacheError> {
    let target = path(dir);
    let io = |e| CacheError::Io(target.clone(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let payload = set.encode_to_vec();
    let tmp = dir.join(format!("{FILE}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(sentinel_config::sha256_hex(&payload).as_bytes())
            .map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.write_all(&payload).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &target).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and verifies the cached configuration.
pub fn load(dir: &Path) -> Result<pb::ResourceSet, CacheError> {
    let target = path(dir);
    let bytes = match std::fs::read(&target) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CacheError::Missing(dir.to_path_buf()));
        }
        Err(e) => return Err(CacheError::Io(target, e)),
    };
    let corrupt = |why: &str| CacheError::Corrupt(target.clone(), why.to_string());
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not a Sentinel cache file"))?;
    if rest.len() < 65 || rest[64] != b'\n' {
        return Err(corrupt("truncated header"));
    }
    let (sum, payload) = (&rest[..64], &rest[65..]);
    if sentinel_config::sha256_hex(payload).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    pb::ResourceSet::decode(payload).map_err(|e| corrupt(&format!("cannot decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> pb::ResourceSet {
        let doc = "upstreams { upstream \"u\" { target \"127.0.0.1:1\"; }; }\nroutes { route \"r\" { upstream \"u\"; }; }";
        let s = sentinel_config::compile("t.kdl", doc).unwrap();
        pb::ResourceSet {
            resources: s.resources(),
            config_version: s.config_hash(),
            version_number: 7,
        }
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(CacheError::Missing(_))));
        store(dir.path(), &set()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), set());
        let mut newer = set();
        newer.version_number = 8;
        store(dir.path(), &newer).unwrap();
        assert_eq!(load(dir.path()).unwrap().version_number, 8);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &set()).unwrap();
        let p = path(dir.path());
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(
            matches!(load(dir.path()), Err(CacheError::Corrupt(_, why)) if why == "checksum mismatch")
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(load(dir.path()), Err(CacheError::Corrupt(..))));
    }
}
