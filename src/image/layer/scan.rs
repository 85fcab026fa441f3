//! The scan: a tree of store paths walked (lstat only) into the members
//! of a generated layer, headers rendered once.

use super::*;

pub(super) struct Scanner<'a> {
    pub(super) mtime: u64,
    /// Mode for every directory below the top, or `None` to keep the store's.
    pub(super) dir_mode: Option<u32>,
    pub(super) owner: Arc<Owner>,
    pub(super) perms: Vec<CompiledRule<'a>>,
    pub(super) entries: Vec<Entry>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(mtime: u64, owner: &Owner, perms: &'a [PermRule]) -> Self {
        Scanner {
            mtime,
            dir_mode: None,
            owner: Arc::new(owner.clone()),
            perms: perms
                .iter()
                .map(|rule| CompiledRule {
                    rule,
                    regex: rule.regex.as_deref().and_then(|r| go_regex(r).ok()),
                })
                .collect(),
            entries: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, name: Vec<u8>, kind: EntryKind, mode: u32) {
        let bare = name.strip_suffix(b"/").unwrap_or(&name);
        let mut mode = mode & 0o7777;
        let mut owner = self.owner.clone();
        for rule in self
            .perms
            .iter()
            .filter(|r| r.matches(bare))
            .map(|r| r.rule)
        {
            if let Some(m) = rule.mode {
                mode = m & 0o7777;
            }
            if rule.uid.is_some()
                || rule.gid.is_some()
                || rule.uname.is_some()
                || rule.gname.is_some()
            {
                let o = Arc::make_mut(&mut owner);
                o.uid = rule.uid.unwrap_or(o.uid);
                o.gid = rule.gid.unwrap_or(o.gid);
                if let Some(u) = &rule.uname {
                    o.uname = u.clone();
                }
                if let Some(g) = &rule.gname {
                    o.gname = g.clone();
                }
            }
        }
        let header = tar::header_blocks(&tar::HeaderFields {
            name: &name,
            kind: match &kind {
                EntryKind::Dir => tar::TypeFlag::Dir,
                EntryKind::File { .. } => tar::TypeFlag::Regular,
                EntryKind::Symlink { .. } => tar::TypeFlag::Symlink,
            },
            mode,
            uid: owner.uid,
            gid: owner.gid,
            uname: owner.uname.as_bytes(),
            gname: owner.gname.as_bytes(),
            size: match &kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            },
            mtime: self.mtime,
            linkname: match &kind {
                EntryKind::Symlink { target } => target,
                _ => b"",
            },
        });
        let meta = Meta {
            path: bare.into(),
            mode,
            uid: owner.uid,
            gid: owner.gid,
            mtime: self.mtime,
        };
        self.entries.push(Entry { kind, header, meta });
    }

    /// Depth-first, children sorted by name bytes: this is exactly the
    /// component-by-component order (`a/b` before `a-b`).
    pub(super) fn walk(&mut self, path: &Path, archive: Vec<u8>) -> Result<(), ScanError> {
        let io_err = |e| ScanError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
        let ft = meta.file_type();
        let mode = meta.mode();
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io_err)?;
            self.push(
                archive,
                EntryKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                },
                mode,
            );
        } else if ft.is_file() {
            // Hard links are written as regular files: store optimisation must
            // never change a layer's bytes.
            self.push(
                archive,
                EntryKind::File {
                    source: path.to_path_buf(),
                    size: meta.len(),
                },
                mode,
            );
        } else if ft.is_dir() {
            let mut dir_name = archive.clone();
            dir_name.push(b'/');
            self.push(dir_name, EntryKind::Dir, self.dir_mode.unwrap_or(mode));
            for (name, child) in sorted_children(path)? {
                let mut a = archive.clone();
                a.push(b'/');
                a.extend_from_slice(&name);
                self.walk(&child, a)?;
            }
        } else {
            return Err(ScanError::Unsupported {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    pub(super) fn finish(self) -> LayerTar {
        LayerTar::generated(self.entries)
    }
}

pub(super) fn sorted_children(dir: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>, ScanError> {
    let io_err = |e| ScanError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        children.push((entry.file_name().as_bytes().to_vec(), entry.path()));
    }
    children.sort();
    Ok(children)
}
