//! Golden vectors: the bytes of format v1, and of its gzip and zstd blobs,
//! pinned by digest. A digest a registry has served must never change for
//! the same store contents: not across commits, not across `cargo update`.
//!
//! How the vectors were derived (once, on 2026-11-24, with
//! `FLAKEPORT_GOLDEN_DUMP=DIR cargo test golden`, which writes the bytes to DIR):
//! - every tar was listed by GNU tar 1.34 (`tar --numeric-owner -tvvf`): names
//!   (the Latin-1 one included), modes (1777 from a perms rule, 0555 store
//!   directories), owners (uid 2097152 and gid 2097153 from PAX records),
//!   symlink targets (a 150-byte one from PAX), mtime 2023-11-14 22:13 UTC;
//!   `tar -xf` as root exited 0 and gave back every file's bytes, the 3 MiB
//!   sparse file's too (GNU tar warns that it does not know POSIX's
//!   `hdrcharset` keyword, and takes the name's bytes as they are);
//! - `gzip -t` and `zstd -t` passed (the zstd frame has an XXH64 check),
//!   and `gzip -dc root.tar.gz`, `zstd -dc root.tar.zst` gave back root.tar
//!   byte for byte (`cmp`);
//! - the `tar` crate re-parses them on every run (below).
//!
//! The digests were then copied from those files' `sha256sum`. Never edit
//! one to make this test pass.

use super::compress::Codec;
use super::*;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};

const ROOT_TREE_TAR: &str =
    "sha256:056ad91dd248208ee1cf0c0917b73b0abb95f59f3ca33309bdf4784f9744438a";
const ROOT_TREE_GZIP: &str =
    "sha256:cce6ec14463515471511bf342a0d8c62ad17b8859761d28f5337a8575e7e09a1";
const ROOT_TREE_ZSTD: &str =
    "sha256:607111ecdb322bd155bb119b80a380a99e96ec79a2625889a75d133aba5ac537";
const STORE_PATHS_TAR: &str =
    "sha256:8a2c4fd3069c1b3ed1b04f52410245f7b3b86ee1f7c2a071d540aecc9e772ede";
const LINKS_TAR: &str = "sha256:0779acf6713fcbf917fd015bb967c2a83876240ab5f27b1a7fb4165c1afc112a";

/// Where the store-paths vector lives: its archive names are absolute
/// paths, so the directory must be the same on every machine.
const STORE_DIR: &str = "/tmp/flakeport-golden-v1";

fn moved(what: &str, got: &str, want: &str, bump: &str) {
    assert_eq!(
        got, want,
        "\n\nTHE BYTES OF {what} CHANGED. A served digest must never change for the same \
         store contents. If this change is meant, {bump}, add vectors for the new version \
         beside these and keep these.\n"
    );
}

fn format_moved(what: &str, got: &str, want: &str) {
    moved(
        what,
        got,
        want,
        &format!(
            "bump layer::FORMAT_VERSION from {FORMAT_VERSION} to {}",
            FORMAT_VERSION + 1
        ),
    )
}

/// Long, non-ASCII and non-UTF-8 names, symlinks (one with a long target),
/// an empty directory, an empty file, a file of a few blocks and a sparse
/// 3 MiB one (read in chunks, not in one small-file read).
fn awkward_root(root: &Path) {
    let mkdir = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let write = |p: &Path, bytes: &[u8], mode: u32| {
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mkdir("bin");
    mkdir("empty");
    mkdir(&"d".repeat(120));
    write(&root.join("bin/tool"), b"#!/bin/sh\necho golden\n", 0o555);
    write(&root.join("zero"), b"", 0o644);
    write(
        &root.join(format!("{}/{}", "d".repeat(120), "f".repeat(140))),
        b"long",
        0o644,
    );
    write(&root.join("h\u{e9}llo-\u{65e5}\u{672c}"), b"unicode", 0o644);
    // Latin-1 "café": not UTF-8, so its PAX record is declared BINARY.
    write(&root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1", 0o600);
    let blocks: Vec<u8> = (0..1500u32).map(|i| (i * 7 % 256) as u8).collect();
    write(&root.join("blocks"), &blocks, 0o644);
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(3 * 1024 * 1024).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"end", 3 * 1024 * 1024 - 3).unwrap();
    symlink("bin/tool", root.join("link")).unwrap();
    symlink("t".repeat(150), root.join("longlink")).unwrap();
}

fn root_tree_source(dir: &Path) -> LayerSource {
    LayerSource::RootTree {
        dir: dir.to_path_buf(),
        mtime: 1_700_000_000,
        owner: Owner {
            uid: 1000,
            gid: 100,
            uname: "golden".into(),
            gname: "users".into(),
        },
        perms: vec![
            // Above ustar's 7 octal digits: uid and gid go in PAX records,
            // and so does a user name longer than ustar's 32 bytes.
            PermRule {
                path: "/bin/tool".into(),
                uid: Some(0o10000000),
                gid: Some(0o10000001),
                uname: Some("a-user-name-longer-than-thirty-two-bytes".into()),
                ..Default::default()
            },
            PermRule {
                path: "/empty".into(),
                mode: Some(0o1777),
                ..Default::default()
            },
        ],
    }
}

fn bytes_of(tar: &LayerTar) -> Vec<u8> {
    let mut v = Vec::new();
    tar.write_range(0, tar.size(), &mut v).unwrap();
    assert_eq!(v.len() as u64, tar.size());
    v
}

fn sha(bytes: &[u8]) -> String {
    crate::vocab::Digest::of(bytes).into()
}

fn dump(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("FLAKEPORT_GOLDEN_DUMP") {
        std::fs::write(Path::new(&dir).join(name), bytes).unwrap();
    }
}

/// Name, mode, uid, gid, link target and size of one member.
type Listed = (Vec<u8>, u32, u64, u64, Option<Vec<u8>>, u64);

/// Names as the `tar` crate reads them back (PAX applied), with modes,
/// ids and link targets.
fn listing(bytes: &[u8]) -> Vec<Listed> {
    let mut a = ::tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut uid = e.header().uid().unwrap();
        let mut gid = e.header().gid().unwrap();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                let r = r.unwrap();
                match r.key().unwrap() {
                    "uid" => uid = r.value().unwrap().parse().unwrap(),
                    "gid" => gid = r.value().unwrap().parse().unwrap(),
                    _ => {}
                }
            }
        }
        let (name, mode) = (e.path_bytes().to_vec(), e.header().mode().unwrap());
        let link = e.link_name_bytes().map(|l| l.to_vec());
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        out.push((name, mode, uid, gid, link, content.len() as u64));
    }
    out
}

#[test]
fn root_tree_v1_and_its_gzip_and_zstd_blobs_are_pinned() {
    let t = tempfile::tempdir().unwrap();
    awkward_root(t.path());
    let tar = LayerTar::scan(&root_tree_source(t.path())).unwrap();
    let bytes = bytes_of(&tar);
    dump("root.tar", &bytes);

    let list = listing(&bytes);
    let names: Vec<&[u8]> = list.iter().map(|e| &e.0[..]).collect();
    let long = format!("/{}/", "d".repeat(120));
    let long_file = format!("{long}{}", "f".repeat(140));
    let expected: Vec<&[u8]> = vec![
        b"/bin/",
        b"/bin/tool",
        b"/blocks",
        b"/caf\xe9",
        long.as_bytes(),
        long_file.as_bytes(),
        b"/empty/",
        "/h\u{e9}llo-\u{65e5}\u{672c}".as_bytes(),
        b"/link",
        b"/longlink",
        b"/sparse",
        b"/zero",
    ];
    assert_eq!(names, expected);
    let tool = &list[1];
    assert_eq!((tool.1, tool.2, tool.3), (0o555, 0o10000000, 0o10000001));
    assert_eq!(list[6].1, 0o1777, "/empty from its perms rule");
    assert_eq!(list[10].5, 3 * 1024 * 1024, "the sparse file, whole");
    assert_eq!(list[9].4.as_deref(), Some("t".repeat(150).as_bytes()));

    format_moved("a v1 root-tree layer", &sha(&bytes), ROOT_TREE_TAR);
    assert_eq!(tar.digest().unwrap(), ROOT_TREE_TAR, "streamed digest");

    for (codec, want, name) in [
        (Codec::Gzip, ROOT_TREE_GZIP, "root.tar.gz"),
        (Codec::Zstd, ROOT_TREE_ZSTD, "root.tar.zst"),
    ] {
        let mut packed = Vec::new();
        let c = codec.compress(&tar, &mut packed).unwrap();
        dump(name, &packed);
        assert!(
            codec.decompress(&packed) == bytes,
            "{name} decompresses to the v1 tar"
        );
        assert_eq!(
            (c.diff_id.as_str(), c.size),
            (ROOT_TREE_TAR, packed.len() as u64)
        );
        moved(
            &format!("a {} layer", codec.name()),
            &sha(&packed),
            want,
            "change the codec's identity string in layer::compress (so the \
             compressed key changes) and pin the encoder again",
        );
    }
}

#[test]
fn store_paths_v1_is_pinned() {
    // The archive names are the paths themselves, so the tree sits at a
    // fixed place; it is rebuilt from nothing and removed afterwards.
    let base = Path::new(STORE_DIR);
    let _ = make_writable_and_remove(base);
    let pkg = base.join("0123456789abcdfghijklmnpqrsvwxyz-golden-1.0");
    std::fs::create_dir_all(pkg.join("share/doc")).unwrap();
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    std::fs::write(pkg.join("bin/run"), b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(pkg.join("share/doc/readme"), b"golden\n").unwrap();
    symlink("bin", pkg.join("libexec")).unwrap();
    for (p, mode) in [
        ("bin/run", 0o555),
        ("share/doc/readme", 0o444),
        ("share/doc", 0o555),
        ("share", 0o555),
        ("bin", 0o555),
        ("", 0o555),
    ] {
        std::fs::set_permissions(pkg.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let src = LayerSource::StorePaths {
        paths: vec![pkg.clone()],
        mtime: 1,
        owner: Owner::default(),
        perms: vec![],
    };
    let bytes = bytes_of(&LayerTar::scan(&src).unwrap());
    make_writable_and_remove(base).unwrap();
    dump("store.tar", &bytes);
    let list = listing(&bytes);
    assert_eq!(list.len(), 9);
    assert_eq!(&list[0].0[..], b"/nix/");
    assert_eq!(&list[1].0[..], b"/nix/store/");
    assert_eq!(list[2].1, 0o555, "store directories keep their mode");
    format_moved("a v1 store-paths layer", &sha(&bytes), STORE_PATHS_TAR);
}

fn make_writable_and_remove(dir: &Path) -> std::io::Result<()> {
    fn walk(p: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.is_dir() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
            for e in std::fs::read_dir(p)? {
                walk(&e?.path())?;
            }
        }
        Ok(())
    }
    walk(dir)?;
    std::fs::remove_dir_all(dir)
}

#[test]
fn links_v1_is_pinned() {
    let src = LayerSource::Links {
        entries: vec![
            LinkEntry {
                path: "/bin".into(),
                target: None,
            },
            LinkEntry {
                path: "/bin/sh".into(),
                target: Some("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-busybox/bin/sh".into()),
            },
            LinkEntry {
                path: "/tmp".into(),
                target: None,
            },
        ],
        mtime: 1,
        owner: Owner::default(),
        perms: vec![PermRule {
            path: "/tmp".into(),
            mode: Some(0o1777),
            ..Default::default()
        }],
    };
    let bytes = bytes_of(&LayerTar::scan(&src).unwrap());
    dump("links.tar", &bytes);
    assert_eq!(listing(&bytes)[2].1, 0o1777);
    format_moved("a v1 links layer", &sha(&bytes), LINKS_TAR);
}
