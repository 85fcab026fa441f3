//! SBOMs of an image's closure: CycloneDX 1.5 and SPDX 2.3, JSON. One
//! component (package) per store path, named and versioned as Nix splits
//! the name, with a `pkg:nix` purl, the narHash as its SHA-256, and the
//! dependency graph from the store references. Nothing in them depends on
//! when or where they are generated.

use super::record::{Component, Record};
use serde_json::{json, Value};

pub const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
pub const SPDX: &str = "application/spdx+json";

/// `pkg:nix/<name>@<version>`; purl percent-encodes what is not a purl
/// character (`+` in `gtk+`, for one).
pub fn purl(c: &Component) -> String {
    let (name, version) = c.name_version();
    let mut p = format!("pkg:nix/{}", encode(name));
    if let Some(v) = version {
        p.push('@');
        p.push_str(&encode(v));
    }
    p
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A UUID made from the image's digest (RFC 4122 variant, version 8: the
/// bits are the digest's), so the BOM's serial number is stable.
fn serial(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    let mut b = hex::decode(&hex[..32.min(hex.len())]).unwrap_or_else(|_| vec![0; 16]);
    b.resize(16, 0);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `pkg:oci/<last name segment>@<digest>`, as the purl spec writes images.
fn image_purl(record: &Record, digest: &str) -> String {
    let last = record.name.rsplit('/').next().unwrap_or(&record.name);
    format!("pkg:oci/{}@{}", encode(last), encode(digest))
}

pub fn cyclonedx(record: &Record, subject: &str) -> Vec<u8> {
    let components: Vec<Value> = record
        .components
        .iter()
        .map(|c| {
            let (name, version) = c.name_version();
            let mut v = json!({
                "type": "library",
                "bom-ref": c.path,
                "name": name,
                "purl": purl(c),
                "properties": properties(c),
            });
            if let Some(version) = version {
                v["version"] = json!(version);
            }
            if let Some(hex) = c.nar_sha256_hex() {
                v["hashes"] = json!([{ "alg": "SHA-256", "content": hex }]);
            }
            if !c.licenses.is_empty() {
                v["licenses"] = c
                    .licenses
                    .iter()
                    .map(|id| json!({ "license": { "id": id } }))
                    .collect();
            }
            v
        })
        .collect();
    let mut dependencies = vec![json!({
        "ref": subject,
        "dependsOn": record.roots().iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
    })];
    dependencies.extend(
        record
            .components
            .iter()
            .map(|c| json!({ "ref": c.path, "dependsOn": c.references })),
    );
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial(subject),
        "version": 1,
        "metadata": {
            "timestamp": record.created,
            "tools": { "components": [{
                "type": "application",
                "name": "flakeport",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": subject,
                "name": record.name,
                "version": record.tag,
                "purl": image_purl(record, subject),
                "hashes": [{ "alg": "SHA-256", "content": subject.trim_start_matches("sha256:") }],
                "properties": [
                    { "name": "nix:system", "value": record.system },
                    { "name": "oci:platform", "value": record.platform },
                ],
            },
        },
        "components": components,
        "dependencies": dependencies,
    });
    serde_json::to_vec_pretty(&doc).expect("JSON values serialise")
}

fn properties(c: &Component) -> Value {
    let mut p = vec![
        json!({ "name": "nix:store_path", "value": c.path }),
        json!({ "name": "nix:nar_hash", "value": c.nar_hash }),
        json!({ "name": "nix:nar_size", "value": c.nar_size.to_string() }),
    ];
    if let Some(d) = &c.deriver {
        p.push(json!({ "name": "nix:deriver", "value": d }));
    }
    Value::Array(p)
}

/// SPDX identifiers allow letters, digits, `.` and `-`; a store hash is all
/// letters and digits, so it names a package uniquely.
fn spdx_id(c: &Component) -> String {
    format!("SPDXRef-Package-{}", c.store_hash())
}

pub fn spdx(record: &Record, subject: &str) -> Vec<u8> {
    let hex = subject.trim_start_matches("sha256:");
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Image",
        "name": record.name,
        "versionInfo": record.tag,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{ "algorithm": "SHA256", "checksumValue": hex }],
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": image_purl(record, subject),
        }],
    })];
    packages.extend(record.components.iter().map(|c| {
        let (name, version) = c.name_version();
        let mut p = json!({
            "SPDXID": spdx_id(c),
            "name": name,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": if c.licenses.is_empty() {
                "NOASSERTION".to_string()
            } else {
                c.licenses.join(" AND ")
            },
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("store path {}", c.path),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(c),
            }],
        });
        if let Some(v) = version {
            p["versionInfo"] = json!(v);
        }
        if let Some(hex) = c.nar_sha256_hex() {
            p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": hex }]);
        }
        p
    }));
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    relationships.extend(record.components.iter().map(|c| {
        json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": spdx_id(c),
        })
    }));
    let by_path: std::collections::HashMap<&str, &Component> = record
        .components
        .iter()
        .map(|c| (c.path.as_str(), c))
        .collect();
    for c in &record.components {
        for r in &c.references {
            if let Some(dep) = by_path.get(r.as_str()) {
                relationships.push(json!({
                    "spdxElementId": spdx_id(c),
                    "relationshipType": "DEPENDS_ON",
                    "relatedSpdxElement": spdx_id(dep),
                }));
            }
        }
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", record.name, subject),
        "documentNamespace": format!("https://flakeport.invalid/spdx/{}/{hex}", record.name),
        "creationInfo": {
            "created": spdx_date(&record.created),
            "creators": [format!("Tool: flakeport-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    serde_json::to_vec_pretty(&doc).expect("JSON values serialise")
}

/// SPDX wants `YYYY-MM-DDThh:mm:ssZ`: no fraction, UTC.
fn spdx_date(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .and_then(|t| {
            let t = t
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .ok()?;
            t.format(&Rfc3339).ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::record::{Described, Source};

    fn record() -> Record {
        let c = |name: &str, refs: &[&str]| Component {
            path: format!("/nix/store/{name}"),
            nar_hash: "sha256-TfUVemy5YnKJ8k66oNBwgDucOxxlapCVEsYLkuRYji4=".into(),
            nar_size: 10,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
            deriver: None,
            licenses: vec![],
        };
        let d = |digest: &str| Described {
            media_type: "m".into(),
            digest: digest.into(),
            size: 1,
        };
        Record {
            name: "app".into(),
            tag: "latest".into(),
            system: "x86_64-linux".into(),
            platform: "linux/amd64".into(),
            oci: d("sha256:aa"),
            docker: d("sha256:bb"),
            created: "1970-01-01T00:00:01.5+00:00".into(),
            source: Source::Flake {
                url: "git+file:///x".into(),
                evaluated: "git+file:///x".into(),
                attribute: "packages.x86_64-linux.app".into(),
                revision: None,
                nar_hash: None,
            },
            outputs: vec![],
            derivations: vec![],
            components: vec![
                c("aaaa-gtk+-3.0", &["cccc-glibc-2.38"]),
                c("bbbb-app", &["aaaa-gtk+-3.0", "cccc-glibc-2.38"]),
                c("cccc-glibc-2.38", &[]),
            ],
        }
    }

    #[test]
    fn purls_encode_what_is_not_a_purl_character() {
        assert_eq!(purl(&record().components[0]), "pkg:nix/gtk%2B@3.0");
        assert_eq!(purl(&record().components[1]), "pkg:nix/app");
    }

    #[test]
    fn documents_are_the_same_bytes_for_the_same_closure() {
        let r = record();
        assert_eq!(
            cyclonedx(&r, "sha256:aa"),
            cyclonedx(&r.clone(), "sha256:aa")
        );
        assert_eq!(spdx(&r, "sha256:aa"), spdx(&r.clone(), "sha256:aa"));
        let cdx: Value = serde_json::from_slice(&cyclonedx(&r, "sha256:aa")).unwrap();
        assert_eq!(cdx["components"].as_array().unwrap().len(), 3);
        // The image depends on what nothing else refers to.
        assert_eq!(
            cdx["dependencies"][0]["dependsOn"],
            json!(["/nix/store/bbbb-app"])
        );
        let spdx: Value = serde_json::from_slice(&spdx(&r, "sha256:aa")).unwrap();
        assert_eq!(spdx["creationInfo"]["created"], "1970-01-01T00:00:01Z");
        let depends = spdx["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "DEPENDS_ON")
            .count();
        assert_eq!(depends, 3);
    }

    #[test]
    fn serial_numbers_are_uuids() {
        let s = serial("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(s, "urn:uuid:01234567-89ab-8def-8123-456789abcdef");
    }
}
