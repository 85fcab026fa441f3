#!/usr/bin/env python3
"""cosign_key.py PKCS8_PEM PASSWORD N: print the key as cosign's encrypted key file
(go-securesystemslib `encrypted`: scrypt + NaCl secretbox around the PKCS#8 DER)."""
import base64, hashlib, json, os, subprocess, sys
import nacl.secret
pem, password, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
der = subprocess.check_output(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", pem, "-outform", "DER"])
salt, nonce = os.urandom(32), os.urandom(24)
key = hashlib.scrypt(password, salt=salt, n=n, r=8, p=1, maxmem=2**28, dklen=32)
sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
doc = {"kdf": {"name": "scrypt", "params": {"N": n, "r": 8, "p": 1}, "salt": base64.b64encode(salt).decode()},
       "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
       "ciphertext": base64.b64encode(sealed).decode()}
body = base64.b64encode(json.dumps(doc).encode()).decode()
print("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
for i in range(0, len(body), 64):
    print(body[i:i + 64])
print("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----")
