//! A generated layer as a directory tree: what unpacking its tar gives
//! (every directory, file, symlink, mode, owner and mtime), made from the
//! files the layer reads instead of from its bytes. The containerd
//! snapshotter makes a node's layers this way.
//!
//! A file whose inode already has the entry's mode, owner and mtime, and no
//! extended attributes, is hard-linked: not a byte is copied, and the tree
//! holds the file for as long as the tree exists, whatever happens to its
//! store path. Any other file (a perms rule changed its owner, the layer's
//! mtime is not the store's, the tree is on another filesystem) is copied
//! and given the entry's metadata. Directories and symlinks are always the
//! tree's own. The only difference from an unpacked tar a program can see
//! is in link counts and inode numbers, which a layer does not carry.
//!
//! Also [`Fingerprint`]: what says, across processes and restarts, that a
//! layer's files are still the ones whose bytes were hashed.

use super::*;
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::fs::PermissionsExt;

/// What a tree made of a layer costs, beyond the files it links.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCost {
    /// Members of the layer.
    pub entries: u64,
    /// Files hard-linked to the file the layer reads.
    pub linked: u64,
    /// Files copied, because their metadata differs or a link failed.
    pub copied: u64,
    /// Disk the tree's own inodes take (directories, symlinks, copies).
    pub bytes: u64,
    /// Inodes the tree adds: every entry but the linked files.
    pub inodes: u64,
}

/// The members of a generated layer (their rendered headers) and the
/// device, inode, size and mtime of each file it reads, hashed. Unlike
/// [`Identity`], it names no scan, so two processes (the registry and the
/// snapshotter) or two runs compute the same value for the same files; and
/// it leaves ctime out, because a hard link to a file moves its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(Fingerprint(out))
    }
}

impl LayerTar {
    /// See [`Fingerprint`]; `None` for a layer that is not generated (a
    /// tar file or an archive member cannot be made into a tree).
    pub fn fingerprint(&self) -> io::Result<Option<Fingerprint>> {
        let LayerTar::Generated { entries, .. } = self else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        h.update(format!("flakeport-fingerprint-v{FORMAT_VERSION}\n"));
        for e in entries {
            h.update(&e.header);
            if let EntryKind::File { source, .. } = &e.kind {
                hash_stat(&mut h, &std::fs::symlink_metadata(source)?, false);
            }
        }
        Ok(Some(Fingerprint(h.finalize().into())))
    }

    /// Make the layer's tree in `dest` (created; it must not hold anything
    /// the layer does not). Fails on a layer that is not generated, and on
    /// a file that is no longer what the scan saw.
    pub fn make_tree(&self, dest: &Path) -> io::Result<TreeCost> {
        let LayerTar::Generated { entries, .. } = self else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only a generated layer can be made into a tree",
            ));
        };
        std::fs::create_dir_all(dest)?;
        let mut cost = TreeCost::default();
        // Directories get their metadata last, deepest first: making their
        // children moves their mtimes, and a 0555 directory takes no
        // children. A directory named twice (parts of one layer) takes the
        // last entry's metadata, as unpacking would leave it.
        let mut dirs: Vec<(PathBuf, &Meta)> = Vec::new();
        let mut dir_at: HashMap<PathBuf, usize> = HashMap::new();
        // What this call made: a path not in it needs no look before it is
        // made (a tar names parents first, and a path twice only when a
        // layer has parts), which saves two stats per member.
        let mut made: std::collections::HashSet<PathBuf> = Default::default();
        made.insert(dest.to_path_buf());
        for e in entries {
            cost.entries += 1;
            let at = dest.join(relative(&e.meta.path)?);
            if let Some(parent) = at.parent().filter(|p| !made.contains(*p)) {
                // Unpacking makes a missing parent 0755 too.
                std::fs::create_dir_all(parent)?;
                made.insert(parent.to_path_buf());
            }
            let again = !made.insert(at.clone());
            match &e.kind {
                EntryKind::Dir => {
                    match again.then(|| std::fs::symlink_metadata(&at)) {
                        Some(Ok(m)) if m.is_dir() => {}
                        Some(Ok(_)) => {
                            std::fs::remove_file(&at)?;
                            std::fs::create_dir(&at)?;
                        }
                        Some(Err(_)) | None => match std::fs::create_dir(&at) {
                            // An implicit parent made before the layer named it.
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && at.is_dir() => {}
                            r => r?,
                        },
                    }
                    match dir_at.get(&at) {
                        Some(&i) => dirs[i].1 = &e.meta,
                        None => {
                            dir_at.insert(at.clone(), dirs.len());
                            dirs.push((at, &e.meta));
                        }
                    }
                }
                EntryKind::Symlink { target } => {
                    if again {
                        replace(&at)?;
                    }
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &at)?;
                    std::os::unix::fs::lchown(
                        &at,
                        Some(uid32(e.meta.uid)?),
                        Some(uid32(e.meta.gid)?),
                    )?;
                    set_mtime(&at, e.meta.mtime)?;
                    cost.inodes += 1;
                    cost.bytes += std::fs::symlink_metadata(&at)?.blocks() * 512;
                }
                EntryKind::File { source, size } => {
                    if again {
                        replace(&at)?;
                    }
                    let m = std::fs::symlink_metadata(source)?;
                    if !m.is_file() || m.len() != *size {
                        return Err(io::Error::other(format!(
                            "{} changed since the layer was scanned",
                            source.display()
                        )));
                    }
                    if same_metadata(&m, &e.meta)
                        && !has_xattrs(source)?
                        && std::fs::hard_link(source, &at).is_ok()
                    {
                        cost.linked += 1;
                        continue;
                    }
                    copy_new(source, &at)?;
                    apply(&at, &e.meta)?;
                    cost.copied += 1;
                    cost.inodes += 1;
                    cost.bytes += std::fs::symlink_metadata(&at)?.blocks() * 512;
                }
            }
        }
        for (at, meta) in dirs.iter().rev() {
            apply(at, meta)?;
            cost.inodes += 1;
            cost.bytes += std::fs::symlink_metadata(at)?.blocks() * 512;
        }
        Ok(cost)
    }
}

/// A copy into a path that must not exist: were it there, it could be a
/// link to a store file, which a copy opening it would overwrite.
fn copy_new(source: &Path, at: &Path) -> io::Result<()> {
    let mut from = std::fs::File::open(source)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(at)?;
    // copy_file_range underneath: a reflink where the filesystem has them.
    io::copy(&mut from, &mut to)?;
    Ok(())
}

/// A member's name as a path below the tree's top: no `..`, no `.`.
fn relative(name: &[u8]) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in name.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if part == b".." || part == b"." {
            return Err(io::Error::other(format!(
                "member name {} climbs",
                String::from_utf8_lossy(name)
            )));
        }
        out.push(OsStr::from_bytes(part));
    }
    Ok(out)
}

/// A later member replaces an earlier one of another kind, as tar does.
fn replace(at: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(at) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(at),
        Ok(_) => std::fs::remove_file(at),
        Err(_) => Ok(()),
    }
}

fn same_metadata(m: &std::fs::Metadata, meta: &Meta) -> bool {
    m.mode() & 0o7777 == meta.mode
        && u64::from(m.uid()) == meta.uid
        && u64::from(m.gid()) == meta.gid
        && m.mtime() == meta.mtime as i64
        && m.mtime_nsec() == 0
}

fn uid32(id: u64) -> io::Result<u32> {
    u32::try_from(id).map_err(|_| io::Error::other(format!("owner id {id} does not fit a uid")))
}

/// Owner, then mode (a chown clears set-id bits), then mtime.
fn apply(at: &Path, meta: &Meta) -> io::Result<()> {
    std::os::unix::fs::lchown(at, Some(uid32(meta.uid)?), Some(uid32(meta.gid)?))?;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(meta.mode))?;
    set_mtime(at, meta.mtime)
}

fn c_path(at: &Path) -> io::Result<CString> {
    CString::new(at.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// atime and mtime, of the link itself for a symlink.
fn set_mtime(at: &Path, mtime: u64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let p = c_path(at)?;
    // SAFETY: `p` is a valid C string and `times` two timespecs, as
    // utimensat(2) asks.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the file carries extended attributes a tar member would not.
fn has_xattrs(at: &Path) -> io::Result<bool> {
    let p = c_path(at)?;
    // SAFETY: a null buffer of size 0 asks only for the list's length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    match n {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            // A filesystem without xattrs has none.
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// path, kind, mode, uid, gid, mtime, content or link target
    type Listed = (String, char, u32, u32, u32, i64, Vec<u8>);

    fn listing(top: &Path) -> Vec<Listed> {
        let mut out = Vec::new();
        let mut todo = vec![top.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let (kind, body) = if m.is_dir() {
                    todo.push(p.clone());
                    ('d', vec![])
                } else if m.file_type().is_symlink() {
                    (
                        'l',
                        std::fs::read_link(&p).unwrap().into_os_string().into_vec(),
                    )
                } else {
                    ('f', std::fs::read(&p).unwrap())
                };
                let rel = p.strip_prefix(top).unwrap().display().to_string();
                out.push((
                    rel,
                    kind,
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    body,
                ));
            }
        }
        out.sort();
        out
    }

    /// The tree equals what unpacking the layer's own bytes (with the `tar`
    /// crate) gives, entry for entry; files whose metadata is the store's
    /// are linked, the one a perms rule gives another owner is copied.
    #[test]
    fn a_tree_is_the_unpacked_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let sp = store.join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        std::fs::create_dir_all(sp.join("bin/sub")).unwrap();
        std::fs::write(sp.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(sp.join("bin/sub/data"), vec![7u8; 10_000]).unwrap();
        std::fs::write(sp.join("owned"), b"mine").unwrap();
        // Mode and owner as the layer's, but not the mtime: copied too.
        std::fs::write(sp.join("touched"), b"later").unwrap();
        std::os::unix::fs::symlink("tool", sp.join("bin/alias")).unwrap();
        for (f, mode, mtime) in [
            ("bin/tool", 0o555, 1),
            ("bin/sub/data", 0o444, 1),
            ("owned", 0o444, 1),
            ("touched", 0o444, 5),
        ] {
            std::fs::set_permissions(sp.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
            set_mtime(&sp.join(f), mtime).unwrap();
        }
        // A store directory is 0555: the tree's must be too.
        std::fs::set_permissions(sp.join("bin/sub"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        let source = LayerSource::StorePaths {
            paths: vec![sp.clone()],
            mtime: 1,
            owner: Owner::default(),
            perms: vec![PermRule {
                path: format!("{}/owned", sp.display()),
                uid: Some(1000),
                gid: Some(100),
                ..PermRule::default()
            }],
        };
        let tar = LayerTar::scan(&source).unwrap();
        let made = tmp.path().join("made");
        let cost = tar.make_tree(&made).unwrap();
        assert_eq!((cost.linked, cost.copied), (2, 2), "{cost:?}");
        assert_eq!(cost.entries, tar.entry_count() as u64);

        let mut bytes = Vec::new();
        tar.write_range(0, tar.size(), &mut bytes).unwrap();
        let unpacked = tmp.path().join("unpacked");
        std::fs::create_dir(&unpacked).unwrap();
        let mut a = ::tar::Archive::new(&bytes[..]);
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.set_preserve_ownerships(true);
        a.unpack(&unpacked).unwrap();
        // The tar crate sets a directory's mtime before its children are
        // unpacked (which move it); set them again, deepest first, as
        // containerd's unpacking does.
        let mut dirs = Vec::new();
        for e in ::tar::Archive::new(&bytes[..]).entries().unwrap() {
            let e = e.unwrap();
            if e.header().entry_type().is_dir() {
                dirs.push((e.path().unwrap().into_owned(), e.header().mtime().unwrap()));
            }
        }
        for (d, mtime) in dirs.iter().rev() {
            set_mtime(&unpacked.join(d.strip_prefix("/").unwrap_or(d)), *mtime).unwrap();
        }
        // Parents the layer does not name (the temporary dir's) get the
        // time they were made, in both.
        let named = |l: Vec<Listed>| -> Vec<_> {
            let top = sp.strip_prefix("/").unwrap().display().to_string();
            l.into_iter()
                .filter(|e| e.0.starts_with("nix") || e.0.starts_with(&top))
                .collect()
        };
        let want = named(listing(&unpacked));
        assert!(want.len() > 5, "{want:?}");
        assert_eq!(named(listing(&made)), want);

        // The fingerprint names the files: another inode is another print.
        let before = tar.fingerprint().unwrap().unwrap();
        assert_eq!(
            LayerTar::scan(&source).unwrap().fingerprint().unwrap(),
            Some(before)
        );
        let f = sp.join("bin/sub/data");
        let body = std::fs::read(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, body).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
        set_mtime(&f, 1).unwrap();
        assert_ne!(tar.fingerprint().unwrap(), Some(before));
    }
}
