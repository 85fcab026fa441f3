//! cosign-compatible signatures of manifests: an ECDSA P-256 / SHA-256
//! signature (ASN.1 DER, base64 in the layer annotation cosign reads) over
//! a "simple signing" payload that names the manifest digest. Signatures
//! are deterministic (RFC 6979): every node, every restart, gives the same
//! bytes for the same key, reference and digest, so nothing is stored.

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use std::path::Path;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

pub struct Signer {
    key: SigningKey,
    public_pem: String,
}

impl Signer {
    /// A PEM private key: PKCS#8 (`PRIVATE KEY`, as `openssl genpkey` and
    /// cosign's decrypted keys are) or SEC1 (`EC PRIVATE KEY`), on P-256.
    pub fn from_file(path: &Path) -> Result<Signer, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Signer::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &str) -> Result<Signer, String> {
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            p256::SecretKey::from_sec1_pem(pem)
                .map(SigningKey::from)
                .map_err(|e| format!("not a P-256 EC private key: {e}"))?
        } else if pem.contains("ENCRYPTED") {
            return Err(
                "an encrypted key: give the key unencrypted (`openssl pkcs8 -topk8 \
                        -nocrypt -in KEY -out PLAIN`), or make one with `openssl genpkey \
                        -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
                    .to_string(),
            );
        } else {
            SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| format!("not a PKCS#8 P-256 private key: {e}"))?
        };
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(Signer { key, public_pem })
    }

    /// The public key, PEM (SubjectPublicKeyInfo): what `cosign verify
    /// --key` and `openssl dgst -verify` take.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// DER-encoded ECDSA signature of SHA-256(`payload`).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(payload);
        sig.to_der().as_bytes().to_vec()
    }
}

/// The payload cosign signs and checks: the manifest digest, and the
/// repository it was pulled as. Field order as cosign writes it.
pub fn simple_signing_payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": { "docker-reference": reference },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXTWC1iRdrsz7Q1nk
iDcCW9dqMyW/CQruiugbi1FkF86hRANCAAQlNqHb1EyIjuIog6wlc9FoaDgEZF5a
g0leEyiZtEl7zylgjAXOOMAdrY2yAB0wGUI6q5V67sbVGARwRx8z/UTX
-----END PRIVATE KEY-----
";

    #[test]
    fn signatures_verify_and_are_deterministic() {
        let s = Signer::from_pem(KEY).unwrap();
        let payload = simple_signing_payload("127.0.0.1:5000/app", "sha256:aa");
        let sig = s.sign(&payload);
        assert_eq!(sig, s.sign(&payload), "RFC 6979: the same signature");
        let der = Signature::from_der(&sig).unwrap();
        s.key.verifying_key().verify(&payload, &der).unwrap();
        let mut changed = payload.clone();
        changed[10] ^= 1;
        assert!(s.key.verifying_key().verify(&changed, &der).is_err());
        assert!(s.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(
            Signer::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn payload_is_what_cosign_writes() {
        assert_eq!(
            String::from_utf8(simple_signing_payload("h/app", "sha256:aa")).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"h/app"},"image":{"docker-manifest-digest":"sha256:aa"},"type":"cosign container image signature"},"optional":null}"#
        );
    }
}
