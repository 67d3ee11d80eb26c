#!/usr/bin/env python3
"""Decrypt one encrypted lockstep object by hand (docs/format.md, "Encrypted objects").

usage: decrypt-object.py KEY_FILE WRAPPED_DATA_KEY BACKUP_ID OBJECT_KEY FILE > plaintext

  KEY_FILE          the operator's key file (64 hex digits)
  WRAPPED_DATA_KEY  the copy's wrapped data key, lockstep-dk1:<key id>:<hex>
                    ("wrapped_key" in the copy's encryption.json)
  BACKUP_ID         the backup's id ("backup_id" in encryption.json)
  OBJECT_KEY        the file's path in the copy, as the manifest lists it, e.g. db/t.00000.tsv.zst
  FILE              the object's bytes (a file of a disk sink, or downloaded)

Writes the plaintext to stdout, one authenticated segment at a time. Exit
status 0 only if the whole object authenticated; on any other status throw
away what was written. Needs the `cryptography` package (Debian:
python3-cryptography; or pip install cryptography).
"""

import hashlib
import hmac
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

MAGIC = b"LKSE1\0"
VERSION = 1
HEADER_LEN = len(MAGIC) + 1 + 16  # magic, version, salt
SEGMENT_CT = 64 * 1024 + 16  # a full segment: 64 KiB of plaintext and its tag


def fail(msg):
    sys.exit(f"decrypt-object: {msg}")


def unwrap_data_key(key_file, wrapped, backup_id):
    with open(key_file, "rb") as f:
        text = f.read()
    if text.endswith(b"\n"):
        text = text[:-1]
    if len(text) != 64:
        fail(f"{key_file}: not a key (64 hex digits and an optional newline)")
    key = bytes.fromhex(text.decode("ascii"))
    key_id = hashlib.sha256(b"lockstep key id" + key).hexdigest()[:16]
    parts = wrapped.strip().split(":")
    if len(parts) != 3 or parts[0] != "lockstep-dk1" or len(parts[2]) != 120:
        fail(f"not a wrapped data key (lockstep-dk1:<key id>:<120 hex digits>): {wrapped!r}")
    wrapped_id, blob = parts[1], bytes.fromhex(parts[2])
    try:
        return ChaCha20Poly1305(key).decrypt(
            blob[:12], blob[12:], b"lockstep data key v1" + backup_id.encode()
        )
    except InvalidTag:
        fail(
            f"the key file {key_file} (key id {key_id}) does not open the data key of "
            f"backup {backup_id}; it was wrapped with key id {wrapped_id}"
        )


def segment_nonce(index, last):
    # 7 zero bytes, the segment index (u32 big-endian), 1 for the last segment.
    return bytes(7) + index.to_bytes(4, "big") + bytes([1 if last else 0])


def decrypt_object(data_key, object_key, f, out):
    header = f.read(HEADER_LEN)
    if len(header) < HEADER_LEN or header[:6] != MAGIC:
        fail(f"encrypted object {object_key}: no lockstep encryption header (LKSE1)")
    if header[6] != VERSION:
        fail(f"encrypted object {object_key}: unknown encryption version {header[6]}")
    salt = header[7:]
    object_cipher = ChaCha20Poly1305(
        hmac.new(data_key, b"lockstep object key v1" + salt, hashlib.sha256).digest()
    )
    aad = object_key.encode()
    index = 0
    segment = f.read(SEGMENT_CT)
    while True:
        following = f.read(SEGMENT_CT) if len(segment) == SEGMENT_CT else b""
        last = not following  # the last segment is the one the file ends with
        if not segment:
            fail(f"encrypted object {object_key}: truncated: no last segment")
        try:
            out.write(object_cipher.decrypt(segment_nonce(index, last), segment, aad))
        except InvalidTag:
            if last and len(segment) == SEGMENT_CT:
                try:
                    object_cipher.decrypt(segment_nonce(index, False), segment, aad)
                    fail(f"encrypted object {object_key}: truncated after segment {index}")
                except InvalidTag:
                    pass
            fail(f"encrypted object {object_key}: segment {index} does not authenticate")
        if last:
            return
        segment, index = following, index + 1


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    key_file, wrapped, backup_id, object_key, path = sys.argv[1:]
    data_key = unwrap_data_key(key_file, wrapped, backup_id)
    with open(path, "rb") as f:
        decrypt_object(data_key, object_key, f, sys.stdout.buffer)


if __name__ == "__main__":
    main()
