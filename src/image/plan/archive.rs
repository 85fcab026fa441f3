//! Image archives in the store: docker-archive (`docker save`, `skopeo copy
//! docker-archive:`, nixpkgs `buildImage` and `pullImage`) and OCI image
//! layouts, as a tar, a gzip or zstd compressed tar (nixpkgs `compressor`) or a directory (also skopeo's `dir:`).
//!
//! An archive is read once, start to end: every member is hashed on the
//! way, so the plan carries each layer's digest and no digest pass reads it
//! again. Layers are then served from the archive itself, by offset
//! ([`LayerSource::ArchiveMember`]), or from the layout's blob file. A
//! member that is compressed is served as it is, under its own digest,
//! with its diff_id from the archive's config.

use super::{ImagePlan, PlanError, PlannedLayer, DEFAULT_CREATED};
use crate::image::layer::compress::Codec;
use crate::image::layer::LayerDigest;
use crate::image::layer::{HashingWriter, LayerSource};
use crate::vocab::Digest;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

/// Members this small that start with `{` or `[` are kept in memory while
/// the archive is read: they may be the manifest, index or config.
const MAX_JSON_MEMBER: u64 = 4 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// An archive file (tar, gzip or zstd) by its first bytes.
pub fn is_archive(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC)
        || head.starts_with(&ZSTD_MAGIC)
        || (head.len() >= 262 && &head[257..262] == b"ustar")
}

/// A directory holding an image: an OCI layout or skopeo's `dir:` layout.
pub fn is_layout_dir(dir: &Path) -> bool {
    dir.join("oci-layout").is_file()
        || (dir.join("manifest.json").is_file() && dir.join("version").is_file())
}

/// What was found of one member (or blob file) while reading.
#[derive(Debug, Clone)]
struct Member {
    source: LayerSource,
    digest: String,
    size: u64,
    /// Its first bytes, to tell a gzip or zstd blob from a tar.
    magic: [u8; 4],
}

/// The members of an archive, or the files of a layout directory.
enum Contents {
    Tar {
        members: HashMap<String, Member>,
        json: HashMap<String, Vec<u8>>,
        /// Symlinks and hard links between members (older `docker save`).
        links: HashMap<String, String>,
    },
    Dir(PathBuf),
}

/// Read an archive or layout directory into a plan whose layers all have
/// known digests and no comments (the history is the archive's own).
/// `arch` picks the image when an OCI index holds several platforms.
pub fn read(path: &Path, arch: &str) -> Result<ImagePlan, PlanError> {
    let fail = |reason: String| PlanError::Archive {
        path: path.to_path_buf(),
        reason,
    };
    let contents = if path.is_dir() {
        Contents::Dir(path.to_path_buf())
    } else {
        read_tar(path).map_err(|e| fail(format!("truncated or malformed archive: {e}")))?
    };
    let (config, layers) = if contents.json("oci-layout").is_some() {
        oci_image(&contents, arch).map_err(fail)?
    } else if contents.json("manifest.json").is_some() {
        docker_image(&contents).map_err(fail)?
    } else {
        return Err(fail(
            "neither a docker-archive (manifest.json) nor an OCI layout (oci-layout, index.json)"
                .into(),
        ));
    };
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(fail(format!(
            "the config lists {} diff_ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    let mut planned = Vec::with_capacity(layers.len());
    for (i, (m, diff_id)) in layers.into_iter().zip(diff_ids).enumerate() {
        let packed = codec_of(&m.magic);
        if packed.is_none() && m.digest != diff_id {
            return Err(fail(format!(
                "layer {i} hashes to {} but the config's diff_id is {diff_id}",
                m.digest
            )));
        }
        planned.push(PlannedLayer {
            known: Some(LayerDigest {
                digest: m.digest,
                size: m.size,
                diff_id: packed.map(|_| diff_id),
                packed,
            }),
            source: m.source,
            comment: None,
        });
    }
    let text = |k: &str, default: &str| config[k].as_str().unwrap_or(default).to_string();
    Ok(ImagePlan {
        architecture: text("architecture", arch),
        os: text("os", "linux"),
        config: match &config["config"] {
            Value::Object(_) => config["config"].clone(),
            _ => json!({}),
        },
        created: text("created", DEFAULT_CREATED),
        layers: planned,
        base_history: config["history"].as_array().cloned().unwrap_or_default(),
        variant: config["variant"].as_str().map(str::to_string),
        licenses: Default::default(),
    })
}

fn codec_of(magic: &[u8; 4]) -> Option<Codec> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Some(Codec::Gzip)
    } else if magic == &ZSTD_MAGIC {
        Some(Codec::Zstd)
    } else {
        None
    }
}

/// One pass over the archive: every regular member hashed, small JSON kept.
fn read_tar(path: &Path) -> io::Result<Contents> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    let gzip = n >= 2 && magic[..2] == GZIP_MAGIC;
    let zstd = n == 4 && magic == ZSTD_MAGIC;
    file.seek(io::SeekFrom::Start(0))?;
    let file = io::BufReader::with_capacity(1 << 20, file);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if zstd {
        Box::new(crate::image::layer::zstd_decoder(file)?)
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let (mut members, mut json, mut links) = (HashMap::new(), HashMap::new(), HashMap::new());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = member_name(&entry.path()?);
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name()? {
                // A symlink is relative to its directory, a hard link to the root.
                let target = if kind.is_symlink() {
                    Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(target)
                } else {
                    target.into_owned()
                };
                links.insert(name, member_name(&target));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let (offset, size) = (entry.raw_file_position(), entry.size());
        let mut sink = MemberSink {
            hash: HashingWriter::default(),
            head: Vec::new(),
            keep: size <= MAX_JSON_MEMBER,
        };
        io::copy(&mut entry, &mut sink)?;
        if sink.hash.written != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name} is cut short"),
            ));
        }
        let magic = sink.magic();
        if sink.keep && sink.head.first().is_some_and(is_json_start) {
            json.insert(name.clone(), std::mem::take(&mut sink.head));
        }
        members.insert(
            name,
            Member {
                source: LayerSource::ArchiveMember {
                    archive: path.to_path_buf(),
                    offset,
                    size,
                    gzip,
                    zstd,
                },
                digest: sink.hash.finish(),
                size,
                magic,
            },
        );
    }
    if members.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no members"));
    }
    Ok(Contents::Tar {
        members,
        json,
        links,
    })
}

/// Hashes a member; keeps its first bytes, or all of it if it may be JSON.
struct MemberSink {
    hash: HashingWriter,
    head: Vec<u8>,
    keep: bool,
}

impl MemberSink {
    fn magic(&self) -> [u8; 4] {
        let mut magic = [0u8; 4];
        let n = self.head.len().min(4);
        magic[..n].copy_from_slice(&self.head[..n]);
        magic
    }
}

/// sha256 digest, size and first bytes of a whole file, in one read.
pub(super) fn hash_file(path: &Path) -> io::Result<(String, u64, [u8; 4])> {
    let mut sink = MemberSink {
        hash: HashingWriter::default(),
        head: Vec::new(),
        keep: false,
    };
    let file = std::fs::File::open(path)?;
    io::copy(&mut io::BufReader::with_capacity(1 << 20, file), &mut sink)?;
    let (magic, size) = (sink.magic(), sink.hash.written);
    Ok((sink.hash.finish(), size, magic))
}

impl Write for MemberSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.write_all(buf)?;
        let want = if self.keep && self.head.first().is_none_or(is_json_start) {
            buf.len()
        } else {
            4usize.saturating_sub(self.head.len()).min(buf.len())
        };
        self.head.extend_from_slice(&buf[..want]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_json_start(b: &u8) -> bool {
    *b == b'{' || *b == b'['
}

/// `./a/../b` -> `b`: names as manifests spell them.
fn member_name(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

impl Contents {
    fn json(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            Contents::Tar { json, links, .. } => {
                let name = links.get(name).map_or(name, String::as_str);
                json.get(name).cloned()
            }
            Contents::Dir(root) => {
                let path = root.join(name);
                let meta = std::fs::metadata(&path).ok()?;
                (meta.is_file() && meta.len() <= MAX_JSON_MEMBER)
                    .then(|| std::fs::read(path).ok())
                    .flatten()
            }
        }
    }

    /// A member by name, hashed (a directory's file is hashed now: once,
    /// since plans of archives are kept).
    fn member(&self, name: &str) -> Result<Member, String> {
        match self {
            Contents::Tar { members, links, .. } => {
                let mut name = name.to_string();
                for _ in 0..8 {
                    match links.get(&name) {
                        Some(target) => name = target.clone(),
                        None => break,
                    }
                }
                members
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| format!("{name} is named but not in the archive"))
            }
            Contents::Dir(root) => {
                let path = root.join(name);
                let (digest, size, magic) =
                    hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Member {
                    source: LayerSource::TarFile { path },
                    size,
                    digest,
                    magic,
                })
            }
        }
    }

    /// A blob by digest, checked against it; JSON ones parsed.
    fn blob(&self, digest: &str, layout: Layout) -> Result<Member, String> {
        let name = layout.blob_name(digest)?;
        let m = self.member(&name)?;
        if m.digest != digest {
            return Err(format!("blob {digest} hashes to {}", m.digest));
        }
        Ok(m)
    }

    /// A JSON blob by digest, checked against it from the bytes in hand.
    fn json_blob(&self, digest: &str, layout: Layout) -> Result<Value, String> {
        let name = layout.blob_name(digest)?;
        let bytes = self
            .json(&name)
            .ok_or_else(|| format!("blob {digest} is missing or not JSON"))?;
        let got = Digest::of(&bytes).to_string();
        if got != digest {
            return Err(format!("blob {digest} hashes to {got}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("blob {digest}: {e}"))
    }
}

#[derive(Clone, Copy)]
enum Layout {
    /// `blobs/<alg>/<hex>`
    Oci,
    /// skopeo `dir:`: `<hex>`
    SkopeoDir,
}

impl Layout {
    fn blob_name(self, digest: &str) -> Result<String, String> {
        let (alg, hex) = digest
            .split_once(':')
            .filter(|(a, h)| *a == "sha256" && crate::vocab::is_sha256_hex(h))
            .ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
        Ok(match self {
            Layout::Oci => format!("blobs/{alg}/{hex}"),
            Layout::SkopeoDir => hex.to_string(),
        })
    }
}

fn parse(bytes: Option<Vec<u8>>, what: &str) -> Result<Value, String> {
    let bytes = bytes.ok_or_else(|| format!("{what} is missing"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{what}: {e}"))
}

/// OCI layout: `index.json` -> (an index ->) a manifest -> config, layers.
fn oci_image(c: &Contents, arch: &str) -> Result<(Value, Vec<Member>), String> {
    let index = parse(c.json("index.json"), "index.json")?;
    let mut descriptor = pick_manifest(&index, arch)?;
    for _ in 0..4 {
        let media = descriptor["mediaType"].as_str().unwrap_or("");
        let digest = descriptor["digest"].as_str().unwrap_or("");
        let doc = c.json_blob(digest, Layout::Oci)?;
        if media.contains("index")
            || media.contains("manifest.list")
            || doc.get("manifests").is_some()
        {
            descriptor = pick_manifest(&doc, arch)?;
            continue;
        }
        return manifest_image(c, &doc, Layout::Oci);
    }
    Err("indexes nested too deep".into())
}

/// The one manifest of an index, or the one for `arch`.
fn pick_manifest(index: &Value, arch: &str) -> Result<Value, String> {
    let manifests = index["manifests"]
        .as_array()
        .ok_or("the index has no manifests")?;
    match manifests.as_slice() {
        [] => Err("the index has no manifests".into()),
        [one] => Ok(one.clone()),
        many => many
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "none of the {} images in the index is for {arch}",
                    many.len()
                )
            }),
    }
}

fn manifest_image(
    c: &Contents,
    manifest: &Value,
    layout: Layout,
) -> Result<(Value, Vec<Member>), String> {
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or("the manifest names no config")?;
    let config = c.json_blob(config_digest, layout)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or("the manifest has no layers")?
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().ok_or("a layer without digest")?;
            c.blob(digest, layout)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((config, layers))
}

/// docker-archive: `manifest.json` = `[{"Config", "Layers"}]`; skopeo's
/// `dir:` layout also has a `manifest.json`, an image manifest.
fn docker_image(c: &Contents) -> Result<(Value, Vec<Member>), String> {
    let manifest = parse(c.json("manifest.json"), "manifest.json")?;
    if manifest.get("schemaVersion").is_some() {
        return manifest_image(c, &manifest, Layout::SkopeoDir);
    }
    let image = match manifest.as_array().map(Vec::as_slice) {
        Some([one]) => one,
        Some([]) | None => return Err("manifest.json lists no image".into()),
        Some(many) => {
            return Err(format!(
                "manifest.json lists {} images; an output must hold one",
                many.len()
            ))
        }
    };
    let config_name = image["Config"]
        .as_str()
        .ok_or("manifest.json names no Config")?;
    let config = parse(c.json(config_name), config_name)?;
    let layers = image["Layers"]
        .as_array()
        .ok_or("manifest.json has no Layers")?
        .iter()
        .map(|l| c.member(l.as_str().ok_or("a layer name that is not a string")?))
        .collect::<Result<Vec<_>, String>>()?;
    Ok((config, layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::LayerTar;

    /// A docker-archive as `docker save` lays it out, with a symlinked layer.
    fn docker_archive(layer: &[u8], diff_id: &str) -> Vec<u8> {
        let config = json!({ "architecture": "amd64", "os": "linux", "config": { "Env": ["A=1"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] }, "history": [{ "created_by": "x" }] });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = br#"[{"Config":"c.json","RepoTags":["x:y"],"Layers":["id/layer.tar"]}]"#;
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("c.json", &config);
        add("abc.tar", layer);
        add("manifest.json", manifest);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "id/layer.tar", "../abc.tar").unwrap();
        b.into_inner().unwrap()
    }

    fn served(source: &LayerSource) -> Vec<u8> {
        let tar = LayerTar::scan(source).unwrap();
        let mut out = Vec::new();
        tar.write_range(0, tar.size(), &mut out).unwrap();
        out
    }

    #[test]
    fn docker_archive_plain_and_gzip_serve_the_member_bytes() {
        let layer: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&layer).to_string();
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.tar");
        std::fs::write(&plain, docker_archive(&layer, &digest)).unwrap();
        let gz = dir.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for path in [&plain, &gz] {
            let p = read(path, "amd64").unwrap();
            assert_eq!(p.layers.len(), 1);
            let known = p.layers[0].known.clone().unwrap();
            assert_eq!(
                (known.digest.as_str(), known.size, known.packed),
                (digest.as_str(), 5000, None)
            );
            assert_eq!(served(&p.layers[0].source), layer, "{}", path.display());
            assert_eq!(p.config["Env"], json!(["A=1"]));
            assert_eq!(p.base_history.len(), 1);
        }
        // A member that does not hash to its diff_id is refused.
        std::fs::write(
            &plain,
            docker_archive(&layer, &Digest::of(b"other").to_string()),
        )
        .unwrap();
        let err = read(&plain, "amd64").unwrap_err().to_string();
        assert!(err.contains("hashes to"), "{err}");
        // A truncated archive is refused, not half-read.
        let whole = docker_archive(&layer, &digest);
        std::fs::write(&plain, &whole[..whole.len() / 2]).unwrap();
        let err = read(&plain, "amd64").unwrap_err().to_string();
        assert!(
            err.contains("truncated or malformed") || err.contains("missing"),
            "{err}"
        );
    }
}
