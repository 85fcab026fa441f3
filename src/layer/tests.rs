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

#[test]
fn key_depends_on_everything_that_changes_bytes() {
    let a = store_source(vec!["/nix/store/a".into(), "/nix/store/b".into()]);
    let reordered = store_source(vec!["/nix/store/b".into(), "/nix/store/a".into()]);
    let LayerSource::StorePaths {
        paths,
        owner,
        perms,
        ..
    } = a.clone()
    else {
        unreachable!()
    };
    let other_mtime = LayerSource::StorePaths {
        paths,
        mtime: 2,
        owner,
        perms,
    };
    assert_eq!(a.key(), a.clone().key());
    assert_ne!(a.key(), reordered.key());
    assert_ne!(a.key(), other_mtime.key());
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
