//! Byte-for-byte tests of the layer engine against trees built in a temp dir.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};

/// A tree with the awkward cases: long and non-ASCII names, symlinks (also
/// long ones), modes, empty directories, 0-byte files, a hard link and a
/// file larger than one read chunk.
fn awkward_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("abc-pkg");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share/empty")).unwrap();
    std::fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("bin/tool"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    std::fs::write(root.join("h\u{e9}llo-\u{65e5}\u{672c}"), b"unicode").unwrap();
    let long = "d".repeat(120);
    std::fs::create_dir_all(root.join(&long)).unwrap();
    std::fs::write(root.join(&long).join("f".repeat(140)), b"long").unwrap();
    symlink("bin/tool", root.join("link")).unwrap();
    symlink("t".repeat(150), root.join("longlink")).unwrap();
    // `a/b` must sort before `a-b`: component order, not string order.
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/b"), b"1").unwrap();
    std::fs::write(root.join("a-b"), b"2").unwrap();
    let big: Vec<u8> = (0..(READ_CHUNK * 2 + 77))
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(root.join("big"), &big).unwrap();
    std::fs::hard_link(root.join("big"), root.join("big-hardlink")).unwrap();
    std::fs::set_permissions(root.join("share"), std::fs::Permissions::from_mode(0o750)).unwrap();
    t
}

fn store_source(paths: Vec<PathBuf>) -> LayerSource {
    LayerSource::StorePaths {
        paths,
        mtime: 1,
        owner: Owner::default(),
        perms: vec![],
    }
}

fn generate(l: &LayerTar) -> Vec<u8> {
    let mut v = Vec::new();
    l.write_range(0, l.size(), &mut v).unwrap();
    v
}

#[derive(Debug, PartialEq)]
struct Parsed {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    mtime: u64,
    link: Option<Vec<u8>>,
    content: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Vec<(Vec<u8>, Parsed)> {
    let mut a = ::tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path_bytes().to_vec();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| l.to_vec());
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        out.push((
            name,
            Parsed {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: e.header().uid().unwrap(),
                gid: h.gid().unwrap(),
                uname: e.header().username().unwrap().unwrap_or("").to_string(),
                mtime: h.mtime().unwrap(),
                link,
                content,
            },
        ));
    }
    out
}

#[test]
fn two_generations_are_byte_identical_and_sized_exactly() {
    let t = awkward_tree();
    let src = store_source(vec![t.path().join("abc-pkg")]);
    let a = LayerTar::scan(&src).unwrap();
    let b = LayerTar::scan(&src).unwrap();
    let (ba, bb) = (generate(&a), generate(&b));
    assert_eq!(ba, bb);
    assert_eq!(ba.len() as u64, a.size());
    assert_eq!(ba.len() % 10240, 0);
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    let mut h = HashingWriter::default();
    h.write_all(&ba).unwrap();
    assert_eq!(
        h.finish(),
        a.digest().unwrap(),
        "streamed digest == buffered digest"
    );
}

#[test]
fn reparsed_tree_matches_the_filesystem() {
    let t = awkward_tree();
    let root = t.path().join("abc-pkg");
    let src = LayerSource::StorePaths {
        paths: vec![root.clone()],
        mtime: 1,
        owner: Owner {
            uid: 0,
            gid: 0,
            uname: "root".into(),
            gname: "root".into(),
        },
        perms: vec![],
    };
    let bytes = generate(&LayerTar::scan(&src).unwrap());
    let entries = parse(&bytes);
    let names: Vec<String> = entries
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    let r = root.to_str().unwrap();
    let long = "d".repeat(120);
    let expected: Vec<String> = [
        "/nix/".to_string(),
        "/nix/store/".to_string(),
        format!("{r}/"),
        format!("{r}/a/"),
        format!("{r}/a/b"),
        format!("{r}/a-b"),
        format!("{r}/big"),
        format!("{r}/big-hardlink"),
        format!("{r}/bin/"),
        format!("{r}/bin/tool"),
        format!("{r}/{long}/"),
        format!("{r}/{long}/{}", "f".repeat(140)),
        format!("{r}/h\u{e9}llo-\u{65e5}\u{672c}"),
        format!("{r}/link"),
        format!("{r}/longlink"),
        format!("{r}/share/"),
        format!("{r}/share/empty/"),
        format!("{r}/zero"),
    ]
    .into();
    assert_eq!(names, expected);

    let by_name: BTreeMap<String, &Parsed> = names
        .iter()
        .cloned()
        .zip(entries.iter().map(|(_, p)| p))
        .collect();
    let get = |suffix: &str| *by_name.get(&format!("{r}/{suffix}")).unwrap();
    for p in by_name.values() {
        assert_eq!((p.uid, p.gid, p.mtime, p.uname.as_str()), (0, 0, 1, "root"));
    }
    assert_eq!(by_name["/nix/"].mode, 0o755);
    assert_eq!(get("bin/tool").mode, 0o555);
    assert_eq!(get("bin/tool").content, b"#!/bin/sh\necho hi\n");
    assert_eq!(get("share/").mode, 0o750);
    assert_eq!(get("share/empty/").kind, b'5');
    assert_eq!(get("zero").content, b"");
    assert_eq!(get("h\u{e9}llo-\u{65e5}\u{672c}").content, b"unicode");
    assert_eq!(get(&format!("{long}/{}", "f".repeat(140))).content, b"long");
    assert_eq!(get("link").kind, b'2');
    assert_eq!(get("link").link.as_deref(), Some(&b"bin/tool"[..]));
    assert_eq!(
        get("longlink").link.as_deref(),
        Some("t".repeat(150).as_bytes())
    );
    // The hard link is a full regular file, not a type-1 entry.
    assert_eq!(get("big-hardlink").kind, b'0');
    assert_eq!(
        get("big-hardlink").content,
        std::fs::read(root.join("big")).unwrap()
    );
}

#[test]
fn root_tree_maps_the_directory_to_slash_and_applies_perms() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("tmp")).unwrap();
    std::fs::create_dir_all(t.path().join("home/app/data")).unwrap();
    std::fs::write(t.path().join("home/app/data/x"), b"x").unwrap();
    std::fs::set_permissions(
        t.path().join("home/app/data"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    symlink("/nix/store/abc-pkg/bin", t.path().join("bin")).unwrap();
    let src = LayerSource::RootTree {
        dir: t.path().to_path_buf(),
        mtime: 7,
        owner: Owner::default(),
        perms: vec![
            PermRule {
                path: "/tmp".into(),
                mode: Some(0o1777),
                ..Default::default()
            },
            PermRule {
                path: "/home/app".into(),
                uid: Some(1000),
                gid: Some(100),
                uname: Some("app".into()),
                recursive: true,
                ..Default::default()
            },
        ],
    };
    let entries = parse(&generate(&LayerTar::scan(&src).unwrap()));
    let m: BTreeMap<String, &Parsed> = entries
        .iter()
        .map(|(n, p)| (String::from_utf8_lossy(n).into_owned(), p))
        .collect();
    assert_eq!(
        m.keys().cloned().collect::<Vec<_>>(),
        [
            "/bin",
            "/home/",
            "/home/app/",
            "/home/app/data/",
            "/home/app/data/x",
            "/tmp/"
        ]
    );
    assert_eq!(m["/tmp/"].mode, 0o1777);
    assert_eq!(
        m["/home/app/data/"].mode, 0o755,
        "root tree directories are writable by their owner"
    );
    assert_eq!(m["/tmp/"].mtime, 7);
    assert_eq!((m["/home/"].uid, m["/home/"].uname.as_str()), (0, "root"));
    assert_eq!((m["/home/app/"].uid, m["/home/app/"].gid), (1000, 100));
    assert_eq!(
        (
            m["/home/app/data/x"].uid,
            m["/home/app/data/x"].uname.as_str()
        ),
        (1000, "app")
    );
}

/// nix2container's `perms` with a regex (its `examples/ownership.nix`:
/// `{ path = test; regex = "/tmp/test1.txt"; uid = 1001; gid = 1001; }`),
/// matched unanchored against each file's path in the store, as its
/// tests/default.nix expects: test1.txt owned by 1001, test2.txt untouched,
/// in a tree moved to `/` and in a store path left in place.
#[test]
fn regex_perms_apply_per_file_to_the_store_path() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("tmp")).unwrap();
    std::fs::write(t.path().join("tmp/test1.txt"), b"1").unwrap();
    std::fs::write(t.path().join("tmp/test2.txt"), b"2").unwrap();
    let store_path = t.path().to_string_lossy().into_owned();
    let rule = |at: &str| PermRule {
        path: at.into(),
        uid: Some(1001),
        gid: Some(1001),
        mode: Some(0o444),
        recursive: true,
        regex: Some("/tmp/test1.txt".into()),
        source: Some(store_path.clone()),
        ..Default::default()
    };
    let root = LayerSource::RootTree {
        dir: t.path().to_path_buf(),
        mtime: 1,
        owner: Owner::default(),
        perms: vec![rule("")],
    };
    let in_place = LayerSource::StorePaths {
        paths: vec![t.path().to_path_buf()],
        mtime: 1,
        owner: Owner::default(),
        perms: vec![rule(&store_path)],
    };
    for (src, prefix) in [(root, String::new()), (in_place, store_path.clone())] {
        let entries = parse(&generate(&LayerTar::scan(&src).unwrap()));
        let m: BTreeMap<String, &Parsed> = entries
            .iter()
            .map(|(n, p)| (String::from_utf8_lossy(n).into_owned(), p))
            .collect();
        let one = m[&format!("{prefix}/tmp/test1.txt")];
        let two = m[&format!("{prefix}/tmp/test2.txt")];
        assert_eq!(
            (one.uid, one.gid, one.mode),
            (1001, 1001, 0o444),
            "{prefix}"
        );
        assert_eq!((two.uid, two.gid), (0, 0), "{prefix}");
        assert_ne!(two.mode, 0o444, "{prefix}");
        let dir = m[&format!("{prefix}/tmp/")];
        assert_eq!(
            dir.uid, 0,
            "{prefix}: the regex does not match the directory"
        );
    }
}

#[test]
fn key_depends_on_everything_that_changes_bytes() {
    let paths = || -> Vec<PathBuf> { vec!["/nix/store/a".into(), "/nix/store/b".into()] };
    let store =
        |paths: Vec<PathBuf>, mtime, owner: Owner, perms: Vec<PermRule>| LayerSource::StorePaths {
            paths,
            mtime,
            owner,
            perms,
        };
    let base = || store(paths(), 1, Owner::default(), vec![]);
    let with_owner = |f: fn(&mut Owner)| {
        let mut o = Owner::default();
        f(&mut o);
        store(paths(), 1, o, vec![])
    };
    let rule = PermRule {
        path: "/nix/store/a".into(),
        mode: Some(0o700),
        ..Default::default()
    };
    // Everything that can change a byte of the layer, one at a time.
    let variants: Vec<(&str, LayerSource)> = vec![
        (
            "path order",
            store(
                vec!["/nix/store/b".into(), "/nix/store/a".into()],
                1,
                Owner::default(),
                vec![],
            ),
        ),
        (
            "one path fewer",
            store(vec!["/nix/store/a".into()], 1, Owner::default(), vec![]),
        ),
        ("mtime", store(paths(), 2, Owner::default(), vec![])),
        ("uid", with_owner(|o| o.uid = 1)),
        ("gid", with_owner(|o| o.gid = 1)),
        ("uname", with_owner(|o| o.uname = "app".into())),
        ("gname", with_owner(|o| o.gname = "app".into())),
        (
            "a perms rule",
            store(paths(), 1, Owner::default(), vec![rule.clone()]),
        ),
        (
            "a perms rule made recursive",
            store(
                paths(),
                1,
                Owner::default(),
                vec![PermRule {
                    recursive: true,
                    ..rule.clone()
                }],
            ),
        ),
        (
            "root tree instead of store paths",
            LayerSource::RootTree {
                dir: "/nix/store/a".into(),
                mtime: 1,
                owner: Owner::default(),
                perms: vec![],
            },
        ),
        (
            "tar file instead of store paths",
            LayerSource::TarFile {
                path: "/nix/store/a".into(),
            },
        ),
    ];
    let k = base().key();
    for (what, v) in &variants {
        assert_ne!(v.key(), k, "{what} must change the key");
    }
    // A fresh, equal value has the same key: it depends on content only.
    assert_eq!(base().key(), k);
    assert_ne!(
        base().key_in_format(FORMAT_VERSION + 1),
        k,
        "a format bump must move every key"
    );
    use super::compress::Codec;
    let (gz, zs) = (Codec::Gzip.key(&base()), Codec::Zstd.key(&base()));
    assert!(
        gz != k && zs != k && gz != zs,
        "each codec has keys of its own"
    );
}

/// Values too large for ustar's octal fields, and names that are not
/// UTF-8, go in PAX records, which the `tar` crate reads back.
#[test]
fn pax_records_carry_what_ustar_cannot() {
    let name = [
        b"/nix/store/x-caf\xe9/".as_slice(),
        "n".repeat(120).as_bytes(),
    ]
    .concat();
    let big = 0o77777777777u64 + 1; // 8 GiB: one more than 11 octal digits
    let header = tar::header_blocks(&tar::HeaderFields {
        name: &name,
        kind: tar::TypeFlag::Regular,
        mode: 0o644,
        uid: 0o7777777 + 1,
        gid: 0o7777777 + 2,
        uname: b"root",
        gname: b"root",
        size: big,
        mtime: big + 5,
        linkname: b"",
    });
    let body = std::str::from_utf8(&header[512..1024]).unwrap_or("");
    let records = String::from_utf8_lossy(&header[512..1024]).into_owned();
    assert!(body.is_empty(), "the records hold a non-UTF-8 path");
    for want in [
        "hdrcharset=BINARY\n",
        "uid=2097152\n",
        "gid=2097153\n",
        "size=8589934592\n",
        "mtime=8589934597\n",
    ] {
        assert!(records.contains(want), "{want:?} in {records:?}");
    }
    let mut archive = ::tar::Archive::new(&header[..]);
    let mut entries = archive.entries().unwrap();
    let mut e = entries.next().unwrap().unwrap();
    assert_eq!(&e.path_bytes()[..], &name[..]);
    assert_eq!(e.size(), big, "size from the PAX record");
    let pax: Vec<(String, Vec<u8>)> = e
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.key().unwrap().to_string(), r.value_bytes().to_vec())
        })
        .collect();
    assert_eq!(pax[0], ("hdrcharset".to_string(), b"BINARY".to_vec()));
    // The tar crate applies the PAX ids to the header it hands back...
    assert_eq!(e.header().uid().unwrap(), 0o7777777 + 1);
    assert_eq!(e.header().gid().unwrap(), 0o7777777 + 2);
    // ...while the ustar fields that could not hold them are zero, not truncated.
    let ustar = &header[header.len() - 512..];
    assert_eq!(&ustar[108..116], b"0000000\0", "uid field");
    assert_eq!(&ustar[124..136], b"00000000000\0", "size field");
}

/// Small files (one read of size + 1 bytes) and large ones (chunks after a
/// stat): growth and shrinkage after the scan both fail the stream.
#[test]
fn a_file_that_changes_size_fails_the_stream() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("p");
    std::fs::create_dir(&p).unwrap();
    let cases: [(Vec<u8>, Vec<u8>); 4] = [
        (b"1234".to_vec(), b"123456".to_vec()),
        (b"123456".to_vec(), b"1234".to_vec()),
        (vec![7u8; 200_000], vec![7u8; 200_001]),
        (vec![7u8; 200_001], vec![7u8; 200_000]),
    ];
    for (scanned, now) in cases {
        std::fs::write(p.join("f"), &scanned).unwrap();
        let l = LayerTar::scan(&store_source(vec![p.clone()])).unwrap();
        std::fs::write(p.join("f"), &now).unwrap();
        assert!(
            l.digest().is_err(),
            "{} -> {} bytes",
            scanned.len(),
            now.len()
        );
    }
}

/// A layer's identity holds while nothing is written; a write of the same
/// size with the mtime set back (what a careful tamperer does) changes it,
/// and so does a file replaced by a copy.
#[test]
fn identity_changes_with_any_write_and_only_then() {
    let t = awkward_tree();
    let src = store_source(vec![t.path().join("abc-pkg")]);
    let l = LayerTar::scan(&src).unwrap();
    let first = l.identity().unwrap();
    assert_eq!(l.identity().unwrap(), first, "nothing changed");
    let f = t.path().join("abc-pkg/bin/tool");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        &f,
        b"#!/bin/sh
echo HI
",
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let written = l.identity().unwrap();
    assert_ne!(written, first, "same size, same mtime, new bytes");
    let copy = t.path().join("copy");
    std::fs::copy(&f, &copy).unwrap();
    std::fs::rename(&copy, &f).unwrap();
    assert_ne!(l.identity().unwrap(), written, "replaced by a copy");
    std::fs::remove_file(&f).unwrap();
    assert!(l.identity().is_err(), "a file gone");
    // Another scan of the same files: its headers, directories and symlinks
    // were read anew, so it is trusted only once its bytes are hashed.
    std::fs::write(&f, b"x").unwrap();
    let (a, b) = (LayerTar::scan(&src).unwrap(), LayerTar::scan(&src).unwrap());
    assert_eq!(a.identity().unwrap(), a.identity().unwrap());
    assert_ne!(a.identity().unwrap(), b.identity().unwrap(), "two scans");
}

/// The pull reader gives the same bytes as `write_range` for every kind of
/// layer, read in uneven pieces, and fails (never comes up short) when a
/// file shrank after the scan.
#[test]
fn readers_match_write_range_for_every_kind() {
    use std::io::Read;
    let t = awkward_tree();
    let generated =
        Arc::new(LayerTar::scan(&store_source(vec![t.path().join("abc-pkg")])).unwrap());
    let whole = generate(&generated);
    let file_path = t.path().join("layer.tar");
    std::fs::write(&file_path, &whole).unwrap();
    let mut archive = b"prefix-bytes".to_vec();
    archive.extend_from_slice(&whole);
    archive.extend_from_slice(b"suffix");
    let archive_path = t.path().join("archive.tar");
    std::fs::write(&archive_path, &archive).unwrap();
    let file = Arc::new(
        LayerTar::scan(&LayerSource::TarFile {
            path: file_path.clone(),
        })
        .unwrap(),
    );
    let member = Arc::new(
        LayerTar::scan(&LayerSource::ArchiveMember {
            archive: archive_path,
            offset: 12,
            size: whole.len() as u64,
            gzip: false,
            zstd: false,
        })
        .unwrap(),
    );
    let size = whole.len() as u64;
    for tar in [&generated, &file, &member] {
        for (start, end) in reader_ranges(size) {
            let mut r = tar.clone().reader(start, end).unwrap();
            let mut got = Vec::new();
            let mut piece = 1usize;
            loop {
                let mut buf = vec![0u8; piece];
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                piece = piece * 3 + 1;
            }
            assert_eq!(got, whole[start as usize..end as usize], "{start}..{end}");
        }
    }
    std::fs::write(&file_path, &whole[..100]).unwrap();
    assert!(file.clone().reader(0, size).is_err(), "shrunk tar file");
    // A large file is read straight from a descriptor kept open across
    // reads: shrinking it mid-stream is an error there too.
    let mut r = generated.clone().reader(0, size).unwrap();
    shrink_big_once_open(t.path(), &whole, &mut *r);
    let mut rest = Vec::new();
    let err = r.read_to_end(&mut rest).unwrap_err();
    assert!(err.to_string().contains("big is shorter"), "{err}");
}

/// The ranges reader tests read of a layer of `size` bytes: whole, inner,
/// across a header boundary, the last byte, empty.
fn reader_ranges(size: u64) -> [(u64, u64); 5] {
    [
        (0, size),
        (1, size - 1),
        (511, 513),
        (size - 1, size),
        (7, 7),
    ]
}

/// Reads `r` (the whole generated layer of `awkward_tree` at `tree`, whose
/// bytes are `whole`, from 0) 100,000 bytes into `abc-pkg/big`, in chunks
/// as a stream reads, so the file is open; then truncates it in place,
/// which the open descriptor sees.
fn shrink_big_once_open(tree: &Path, whole: &[u8], r: &mut dyn LayerRead) {
    let big = tree.join("abc-pkg/big");
    let content = std::fs::read(&big).unwrap();
    let at = whole
        .windows(content.len())
        .position(|w| w == content.as_slice())
        .unwrap();
    let mut head = vec![0u8; at + 100_000];
    for chunk in head.chunks_mut(64 * 1024) {
        r.read_exact(chunk).unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(5)
        .unwrap();
}

/// Sizes of the regular files under `dir`.
fn walk_files(dir: &Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let m = std::fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            sizes.extend(walk_files(&path));
        } else if m.is_file() {
            sizes.push(m.len());
        }
    }
    sizes
}

/// What a stream does: `read_cached` first, `read` where that would
/// block. Returns the bytes and how many came from `read_cached`.
fn read_like_a_stream(r: &mut dyn LayerRead, chunk: usize) -> io::Result<(Vec<u8>, usize)> {
    let (mut got, mut cached) = (Vec::new(), 0);
    let mut buf = vec![0u8; chunk];
    loop {
        let n = match r.read_cached(&mut buf) {
            Ok(n) => {
                cached += n;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.read(&mut buf)?,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((got, cached));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads from the page cache (`RWF_NOWAIT`) mixed with blocking reads give
/// the bytes `write_range` makes, for every kind of layer and range. They
/// happen only inside a file already open: in a generated layer, never in
/// a header (nor to open a file), and a file that shrank is an error there
/// too, never a short body.
#[test]
fn cached_reads_match_write_range_and_stay_inside_open_files() {
    let t = awkward_tree();
    let generated =
        Arc::new(LayerTar::scan(&store_source(vec![t.path().join("abc-pkg")])).unwrap());
    let whole = generate(&generated);
    let file_path = t.path().join("layer.tar");
    std::fs::write(&file_path, &whole).unwrap();
    let file = Arc::new(LayerTar::scan(&LayerSource::TarFile { path: file_path }).unwrap());
    let size = whole.len() as u64;
    for (tar, chunk) in [(&generated, 64 * 1024), (&generated, 1000), (&file, 4096)] {
        for (start, end) in reader_ranges(size) {
            let mut r = tar.clone().reader(start, end).unwrap();
            let (got, _) = read_like_a_stream(&mut *r, chunk).unwrap();
            assert!(
                got == whole[start as usize..end as usize],
                "{start}..{end} by {chunk}"
            );
        }
    }
    // Large files' bytes come from the page cache (just written), each
    // after the blocking read that opened it; a tar file's all do.
    let large: u64 = walk_files(&t.path().join("abc-pkg"))
        .into_iter()
        .filter(|&len| len > SMALL_FILE)
        .sum();
    let (_, cached) =
        read_like_a_stream(&mut *generated.clone().reader(0, size).unwrap(), 65536).unwrap();
    assert!(
        cached > 0 && (cached as u64) < large,
        "{cached} of the large files' {large} bytes from the cache"
    );
    let (_, cached) =
        read_like_a_stream(&mut *file.clone().reader(0, size).unwrap(), 65536).unwrap();
    assert_eq!(cached, whole.len(), "a tar file's bytes from the cache");
    // At a header, nothing is open yet: that read may block.
    let mut r = generated.clone().reader(0, size).unwrap();
    let e = r.read_cached(&mut [0u8; 512]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // Shrunk in place while open: an error naming it.
    shrink_big_once_open(t.path(), &whole, &mut *r);
    let err = read_like_a_stream(&mut *r, 65536).unwrap_err();
    assert!(err.to_string().contains("big is shorter"), "{err}");
}

#[test]
fn pax_records_are_self_counting() {
    for len in [1usize, 5, 80, 95, 96, 97, 990, 995, 1000] {
        let mut v = Vec::new();
        tar::header_blocks(&tar::HeaderFields {
            name: "x".repeat(len + 100).as_bytes(),
            kind: tar::TypeFlag::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: b"",
            gname: b"",
            size: 0,
            mtime: 1,
            linkname: b"",
        })
        .iter()
        .for_each(|b| v.push(*b));
        let body = &v[512..];
        let end = body.iter().position(|&b| b == b'\n').unwrap() + 1;
        let record = std::str::from_utf8(&body[..end]).unwrap();
        let n: usize = record.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, record.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any set of ranges that tiles the layer concatenates to the whole.
    #[test]
    fn ranges_concatenate_to_the_whole(cuts in proptest::collection::vec(0.0f64..1.0, 0..12)) {
        let t = awkward_tree();
        let l = LayerTar::scan(&store_source(vec![t.path().join("abc-pkg")])).unwrap();
        let whole = generate(&l);
        let mut points: Vec<u64> = cuts.iter().map(|c| (c * l.size() as f64) as u64).collect();
        points.push(0);
        points.push(l.size());
        points.sort();
        let mut joined = Vec::new();
        for w in points.windows(2) {
            let before = joined.len();
            l.write_range(w[0], w[1], &mut joined).unwrap();
            prop_assert_eq!((joined.len() - before) as u64, w[1] - w[0]);
        }
        prop_assert_eq!(joined, whole);
    }

    /// Random trees: computed size equals streamed size, and the tar crate
    /// reads back every file's bytes.
    #[test]
    fn random_trees_roundtrip(files in proptest::collection::btree_map("[a-z\u{e9}]{1,12}(/[a-z]{1,40}){0,3}", 0usize..3000, 1..20)) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("pkg");
        std::fs::create_dir(&root).unwrap();
        let mut written = BTreeMap::new();
        for (i, (rel, len)) in files.iter().enumerate() {
            let p = root.join(rel);
            if std::fs::create_dir_all(p.parent().unwrap()).is_err() || p.is_dir() {
                continue;
            }
            let body: Vec<u8> = (0..*len).map(|j| ((i + j) % 256) as u8).collect();
            if std::fs::write(&p, &body).is_ok() {
                written.insert(p.to_str().unwrap().to_string(), body);
            }
        }
        let l = LayerTar::scan(&store_source(vec![root.clone()])).unwrap();
        let bytes = generate(&l);
        prop_assert_eq!(bytes.len() as u64, l.size());
        let parsed: BTreeMap<String, Vec<u8>> = parse(&bytes)
            .into_iter()
            .filter(|(_, p)| p.kind == b'0')
            .map(|(n, p)| (String::from_utf8(n).unwrap(), p.content))
            .collect();
        // Files later turned into directories by a longer path are gone.
        let expected: BTreeMap<String, Vec<u8>> =
            written.into_iter().filter(|(p, _)| Path::new(p).is_file()).collect();
        prop_assert_eq!(parsed, expected);
    }
}
