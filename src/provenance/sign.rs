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
    /// A PEM private key on P-256: PKCS#8 (`PRIVATE KEY`, as `openssl
    /// genpkey` writes), SEC1 (`EC PRIVATE KEY`), or cosign's own
    /// encrypted file (`cosign generate-key-pair`), opened with
    /// `COSIGN_PASSWORD` as cosign does.
    pub fn from_file(path: &Path) -> Result<Signer, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let password = std::env::var("COSIGN_PASSWORD").ok();
        Signer::from_pem(&pem, password.as_deref()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &str, password: Option<&str>) -> Result<Signer, String> {
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            p256::SecretKey::from_sec1_pem(pem)
                .map(SigningKey::from)
                .map_err(|e| format!("not a P-256 EC private key: {e}"))?
        } else if let Some(body) = cosign_encrypted(pem) {
            let password =
                password.ok_or("a cosign key, encrypted: give its password in COSIGN_PASSWORD")?;
            let der = decrypt_cosign(&body, password)?;
            SigningKey::from_pkcs8_der(&der)
                .map_err(|e| format!("the decrypted cosign key is no P-256 key: {e}"))?
        } else if pem.contains("ENCRYPTED") {
            return Err(
                "an encrypted PKCS#8 key: give it unencrypted (`openssl pkcs8 -topk8 \
                        -nocrypt -in KEY -out PLAIN`)"
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

/// The base64 body of cosign's encrypted key PEM, if `pem` is one.
fn cosign_encrypted(pem: &str) -> Option<String> {
    for label in [
        "ENCRYPTED SIGSTORE PRIVATE KEY",
        "ENCRYPTED COSIGN PRIVATE KEY",
    ] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(rest) = pem.split_once(&begin).map(|(_, r)| r) {
            let body = rest.split_once(&end)?.0;
            return Some(body.split_whitespace().collect());
        }
    }
    None
}

/// cosign's key file (go-securesystemslib `encrypted`): JSON naming an
/// scrypt key derivation and a NaCl secretbox, around the PKCS#8 DER key.
fn decrypt_cosign(body: &str, password: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use crypto_secretbox::aead::{Aead, KeyInit};
    #[derive(serde::Deserialize)]
    struct Sealed {
        kdf: Kdf,
        cipher: Cipher,
        ciphertext: String,
    }
    #[derive(serde::Deserialize)]
    struct Kdf {
        name: String,
        params: KdfParams,
        salt: String,
    }
    #[derive(serde::Deserialize)]
    struct KdfParams {
        #[serde(rename = "N")]
        n: u64,
        r: u32,
        p: u32,
    }
    #[derive(serde::Deserialize)]
    struct Cipher {
        name: String,
        nonce: String,
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |what: &str| format!("not a cosign key file: {what}");
    let json = b64
        .decode(body)
        .map_err(|_| bad("the PEM body is not base64"))?;
    let sealed: Sealed = serde_json::from_slice(&json).map_err(|e| bad(&e.to_string()))?;
    if sealed.kdf.name != "scrypt" || sealed.cipher.name != "nacl/secretbox" {
        return Err(bad(&format!(
            "{} / {}",
            sealed.kdf.name, sealed.cipher.name
        )));
    }
    let KdfParams { n, r, p } = sealed.kdf.params;
    if !n.is_power_of_two() || n < 2 {
        return Err(bad("scrypt N is not a power of two"));
    }
    let params =
        scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).map_err(|e| bad(&e.to_string()))?;
    let salt = b64.decode(&sealed.kdf.salt).map_err(|_| bad("salt"))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut key)
        .map_err(|e| bad(&e.to_string()))?;
    let nonce: [u8; 24] = b64
        .decode(&sealed.cipher.nonce)
        .map_err(|_| bad("nonce"))?
        .try_into()
        .map_err(|_| bad("the nonce is not 24 bytes"))?;
    let ciphertext = b64
        .decode(&sealed.ciphertext)
        .map_err(|_| bad("ciphertext"))?;
    crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), ciphertext.as_slice())
        .map_err(|_| "cannot decrypt the cosign key: wrong COSIGN_PASSWORD?".to_string())
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
        let s = Signer::from_pem(KEY, None).unwrap();
        let payload = simple_signing_payload("127.0.0.1:5000/app", "sha256:aa");
        let sig = s.sign(&payload);
        assert_eq!(sig, s.sign(&payload), "RFC 6979: the same signature");
        let der = Signature::from_der(&sig).unwrap();
        s.key.verifying_key().verify(&payload, &der).unwrap();
        let mut changed = payload.clone();
        changed[10] ^= 1;
        assert!(s.key.verifying_key().verify(&changed, &der).is_err());
        assert!(s.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(Signer::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None
        )
        .is_err());
    }

    /// `KEY` as cosign's encrypted key file, password `flakeport` (made by
    /// tests/cosign_key.py with scrypt N=1024, to keep the test quick).
    const COSIGN_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOiB7Im5hbWUiOiAic2NyeXB0IiwgInBhcmFtcyI6IHsiTiI6IDEwMjQs
ICJyIjogOCwgInAiOiAxfSwgInNhbHQiOiAiZWZWVHBBTVZYanc2TGxqWExTSDFC
aktSZzhtOGx6MjkyeTVLVHJKL25CWT0ifSwgImNpcGhlciI6IHsibmFtZSI6ICJu
YWNsL3NlY3JldGJveCIsICJub25jZSI6ICJHaTZWSXE5Tk9CbklQTVBqZmw2bFhT
bG9LWFh6VXhyMyJ9LCAiY2lwaGVydGV4dCI6ICJqbmlvdFVmbHAzazRjU1VoSncy
RUhuVG05azlDU0Z6Z0RTaVNYbWFFSkF3NVYzQVpvcVZLNWgwNUJZa3Jac2hhSHBY
YVNmUEpoN2RGempzSkFKUkRpVnUzZi9jSWIrT3ZmTVJrbmJVL25zM3ZqektLV1dR
WUZQdjd6dVdPZGVwbW1mVVk3ek4yTlVIcjA0cjkzN0VpdTVDRlBxaEZTajVsSEpm
cHRmRzVoblZaUUdQdjVleWtEbmkyNHd0aFlGcjdNTjlHdjN2Ti9PQmVDQT09In0=
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";

    #[test]
    fn cosign_key_files_open_with_their_password() {
        let s = Signer::from_pem(COSIGN_KEY, Some("flakeport")).unwrap();
        let plain = Signer::from_pem(KEY, None).unwrap();
        assert_eq!(s.public_key_pem(), plain.public_key_pem());
        let wrong = Signer::from_pem(COSIGN_KEY, Some("nope")).err().unwrap();
        assert!(wrong.contains("wrong COSIGN_PASSWORD"), "{wrong}");
        let none = Signer::from_pem(COSIGN_KEY, None).err().unwrap();
        assert!(none.contains("COSIGN_PASSWORD"), "{none}");
    }

    #[test]
    fn payload_is_what_cosign_writes() {
        assert_eq!(
            String::from_utf8(simple_signing_payload("h/app", "sha256:aa")).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"h/app"},"image":{"docker-manifest-digest":"sha256:aa"},"type":"cosign container image signature"},"optional":null}"#
        );
    }
}
