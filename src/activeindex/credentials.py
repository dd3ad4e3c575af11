"""Content Credentials (C2PA) for released files, with the official ``c2pa-python`` library (0.38).

A released (activated) file gets a new signed manifest whose parent ingredient is the publisher's original
file (carrying the original's own manifest when it has one) and whose ``c2pa.actions`` assertion records
the activation as a ``c2pa.edited`` action. Released files are JPEG, PNG or WebP; an original is named as the
ingredient when it is one of those, TIFF, GIF, HEIC/HEIF or AVIF (`ingredient_format`); any other (BMP)
cannot be signed for: the library refuses an edit without its parent (the first action must be
``c2pa.opened`` or ``c2pa.created``, and the file was not created here). No thumbnails are embedded
(`library_context`); an original's own manifest store, thumbnails included, is carried whole.

Given the released file's fingerprint (`binding.encode_binding` of its descriptor), the manifest also carries a
``c2pa.soft-binding`` assertion (C2PA 2.x, the soft binding assertion): ``alg`` `binding.ALG`, one block
whose ``scope`` is empty (the whole image) and whose ``value`` is that fingerprint, and an empty ``pad``. A
validator holding a stripped copy computes its fingerprint and resolves it through the service's
``/c2pa/v1/matches/byBinding`` to this manifest.

Trust: c2pa-python 0.29 and later trust no root by default, so a manifest whose signature and hashes verify
reads ``Valid`` with the failure ``signingCredential.untrusted`` until its root is given as a trust anchor
(``trust_anchors``, a PEM file of root certificates), then ``Trusted``.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._version import __version__
from .binding import ALG
from .errors import InvalidInputError
from .imageio import read_file, write_atomically

__all__ = ["SigningMaterial", "manifest_store", "active_manifest", "active_manifest_id", "sign_activated", "validation",
           "read_report", "library_context", "check_trust_anchors", "ingredient_format", "ALGORITHMS", "DESCRIPTION",
           "SOFT_BINDING"]

logger = logging.getLogger(__name__)

AGENT = {"name": "activeindex", "version": __version__}
DESCRIPTION = "imperceptible perturbation for copy detection (active indexing)"
SOFT_BINDING = "c2pa.soft-binding"  # the soft binding assertion's label
_CURVES = {"es256": ec.SECP256R1, "es384": ec.SECP384R1, "es512": ec.SECP521R1}
_KEY_TYPES = {**dict.fromkeys(_CURVES, ec.EllipticCurvePrivateKey),
              **dict.fromkeys(("ps256", "ps384", "ps512"), rsa.RSAPrivateKey), "ed25519": ed25519.Ed25519PrivateKey}
ALGORITHMS = tuple(_KEY_TYPES)  # c2pa.C2paSigningAlg's members
LEAF_PROFILE = ("a critical key usage with digitalSignature, an extended key usage such as emailProtection or "
                "documentSigning, and an authority key identifier")
_JUMBF_C2PA = b"jumdc2pa"  # a JUMBF superbox whose description box has the C2PA manifest store's UUID
# ISO BMFF major brands of the still-image files the C2PA library takes as ingredients
_BMFF_BRANDS = {**dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"), "image/heic"),
                **dict.fromkeys((b"avif", b"avis"), "image/avif")}


@dataclass(frozen=True)
class SigningMaterial:
    """What signs a manifest: a PEM certificate chain (leaf first, root left out) and the leaf's PEM key.

    ``trust_anchors`` (PEM roots, optional) are trusted when the original's own credentials are read and
    recorded in the ingredient; ``timestamp_url`` is an RFC 3161 time-stamp authority.
    """

    certificate_chain: Path
    private_key: Path
    algorithm: str = "es256"
    timestamp_url: str | None = None
    trust_anchors: Path | None = None

    @classmethod
    def load(cls, certificate_chain: str | Path, private_key: str | Path, algorithm: str = "es256",
             timestamp_url: str | None = None, trust_anchors: str | Path | None = None) -> SigningMaterial:
        """The material, its files read and checked now (`read`): a bad file is named in a one-line error."""
        material = cls(Path(certificate_chain), Path(private_key), algorithm.lower(), timestamp_url,
                       None if trust_anchors is None else Path(trust_anchors))
        material.read()
        return material

    def read(self) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM), checked: a known algorithm, a key of its type that matches the leaf
        certificate, a leaf certificate in its validity period, trust anchors that are PEM certificates.

        Raises:
            InvalidInputError: naming the file at fault.
        """
        if self.algorithm not in _KEY_TYPES:
            raise InvalidInputError(f"unknown signing algorithm {self.algorithm!r} (one of {', '.join(ALGORITHMS)})")
        chain, key_pem = read_file(self.certificate_chain), read_file(self.private_key)
        leaf = _certificates(self.certificate_chain, chain)[0]
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidInputError(f"{self.private_key}: not an unencrypted PEM private key ({e})") from e
        self._check(leaf, key)
        if self.trust_anchors is not None:
            check_trust_anchors(self.trust_anchors)
        return chain, key_pem

    def _check(self, leaf: x509.Certificate, key: PrivateKeyTypes) -> None:
        """The key fits the algorithm and the leaf certificate, and the leaf is valid today."""
        curve = _CURVES.get(self.algorithm)
        if not isinstance(key, _KEY_TYPES[self.algorithm]) or (curve and not isinstance(key.curve, curve)):
            raise InvalidInputError(f"{self.private_key}: not a key for {self.algorithm}")
        public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*public) != leaf.public_key().public_bytes(*public):
            raise InvalidInputError(f"{self.private_key}: does not match the first certificate of "
                                    f"{self.certificate_chain}")
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if not start <= dt.datetime.now(dt.UTC) <= end:
            raise InvalidInputError(f"{self.certificate_chain}: the signing certificate is valid only from "
                                    f"{start:%Y-%m-%d} to {end:%Y-%m-%d}")


def manifest_store(path: str | Path) -> bytes | None:
    """The raw C2PA manifest store (JUMBF) embedded in a JPEG, PNG or WebP file, or None if it has none."""
    data = read_file(path)
    return _store(data, _format(data))


def active_manifest(store: bytes) -> bytes:
    """A manifest store (`manifest_store`) holding only its active manifest, the last one (C2PA 2.x, 11.1).

    The ingredients' own manifests are left out, so a validator reports them missing
    (``ingredient.manifest.missing``); the active manifest's claim and signature validate as before.

    Raises:
        InvalidInputError: not a C2PA manifest store.
    """
    boxes = list(_boxes(store, 0, len(store)))
    at, size, header = boxes[0] if len(boxes) == 1 else (0, 0, 0)
    children = list(_boxes(store, at + header, at + size))
    if size != len(store) or store[at + header + 4:at + header + 12] != _JUMBF_C2PA or len(children) < 2:
        raise InvalidInputError("not a C2PA manifest store (a JUMBF superbox of manifests)")
    (desc_at, desc_size, _), (last_at, last_size, _) = children[0], children[-1]
    body = store[desc_at:desc_at + desc_size] + store[last_at:last_at + last_size]
    return struct.pack(">I", 8 + len(body)) + b"jumb" + body


def active_manifest_id(path: str | Path) -> str | None:
    """The label of the file's active manifest (``urn:c2pa:...``), or None if it has no manifest store."""
    return validation(path).get("active_manifest")


def validation(path: str | Path, trust_anchors: str | Path | None = None) -> dict:
    """What ``c2pa.Reader`` reports: the manifest store as a dict, with ``validation_state`` and
    ``validation_results``; ``{}`` for a file without one. ``trust_anchors``: PEM roots to trust."""
    with library_context(trust_anchors) as context:
        return read_report(path, context)


def read_report(path: str | Path, context: c2pa.Context) -> dict:
    """`validation` under an open `library_context`, which many reads may share: the report of a file in any format
    the library reads (`ingredient_format`), ``{}`` for a file without a manifest store.

    Raises:
        InvalidInputError: an unreadable file, or a manifest store the library cannot read (with its reason).
    """
    data = read_file(path)
    mime = _media_type(data)
    if mime is None or (_format(data) is not None and _store(data, mime) is None):  # checked without the library
        return {}
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
        if reader is None:
            return {}
        with reader:
            return json.loads(reader.json())
    except c2pa.C2paError as e:
        raise InvalidInputError(f"{path}: unreadable Content Credentials ({_one_line(e)})") from e


def check_trust_anchors(path: str | Path) -> Path:
    """``path``, checked now: a readable PEM file of certificates (the roots to trust).

    Raises:
        InvalidInputError: a missing file, or one that holds no PEM certificate (the message names it).
    """
    path = Path(path)
    _certificates(path, read_file(path))
    return path


def ingredient_format(path: str | Path) -> str | None:
    """The MIME type of a file the C2PA library can name as an ingredient (JPEG, PNG, WebP, TIFF, GIF, HEIC/HEIF,
    AVIF), from its signature; None for anything else (BMP)."""
    return _media_type(read_file(path))


def sign_activated(original: Path, activated: Path, output: Path, material: SigningMaterial,
                   parameters: dict | None = None, *, title: str | None = None, soft_binding: str | None = None) -> str:
    """Write ``output``: the activated file's bytes with a new signed manifest whose parent ingredient is
    ``original`` and whose ``c2pa.actions`` records the activation (``c2pa.edited``, ``parameters`` kept).
    ``soft_binding``: the activated file's `binding.ALG` value (`binding.encode_binding` of its descriptor),
    written as a ``c2pa.soft-binding`` assertion (None: none).

    ``output`` is written atomically and may be ``activated`` itself; its format is the activated file's
    (read from its bytes, never from a name). ``title``: the manifest's title (default: ``output``'s name;
    give the final name when ``output`` is a temp file).

    Returns:
        the new manifest's label (``urn:c2pa:...``).

    Raises:
        InvalidInputError: unreadable or unsupported files, bad signing material, or a signing failure.
    """
    chain, key = material.read()
    source, mime = read_file(activated), _format(read_file(activated))
    parent_mime = ingredient_format(original)
    if mime is None:
        raise InvalidInputError(f"{activated}: Content Credentials are written into a JPEG, PNG or WebP file")
    if parent_mime is None:
        raise InvalidInputError(f"{original}: C2PA cannot name this file as an ingredient (JPEG, PNG, WebP, TIFF, "
                                "GIF, HEIC or AVIF); convert it to one of those to sign its released copy")
    action = {"action": "c2pa.edited", "softwareAgent": AGENT, "description": DESCRIPTION}
    if parameters is not None:
        action["parameters"] = parameters
    assertions = [{"label": "c2pa.actions", "data": {"actions": [action]}}]
    if soft_binding is not None:
        assertions.append(_soft_binding_assertion(soft_binding))
    definition = {"claim_generator_info": [AGENT], "title": title or Path(output).name, "assertions": assertions}
    info = c2pa.C2paSignerInfo(material.algorithm.encode(), chain, key, material.timestamp_url)
    signed = io.BytesIO()
    try:
        with library_context(material.trust_anchors) as context, c2pa.Signer.from_info(info) as signer, \
                c2pa.Builder(definition, context=context) as builder:
            builder.set_intent(c2pa.C2paBuilderIntent.EDIT)  # the library adds `c2pa.opened` for the parent
            builder.add_ingredient({"title": Path(original).name, "relationship": "parentOf"}, parent_mime,
                                   io.BytesIO(read_file(original)))
            builder.sign(signer, mime, io.BytesIO(source), signed)
            with c2pa.Reader(mime, io.BytesIO(signed.getvalue()), None, context) as reader:
                label = json.loads(reader.json())["active_manifest"]
    except c2pa.C2paError.Signature as e:
        raise InvalidInputError(f"{material.certificate_chain}: refused by the C2PA signer ({_one_line(e)}); the "
                                f"leaf certificate needs {LEAF_PROFILE}") from e
    except c2pa.C2paError as e:
        raise InvalidInputError(f"{activated}: cannot sign Content Credentials ({_one_line(e)})") from e
    write_atomically(output, lambda f: f.write(signed.getvalue()))
    logger.info("signed %s as %s (ingredient %s)", output, label, original)
    return label


def _soft_binding_assertion(value: str) -> dict:
    """The ``c2pa.soft-binding`` assertion of a `binding.ALG` value over the whole image (an empty scope). The
    library turns a JSON definition into CBOR, so ``pad`` (bytes in the spec) is stored as an empty array; it reads
    back and validates."""
    return {"label": SOFT_BINDING, "data": {"alg": ALG, "blocks": [{"scope": {}, "value": value}], "pad": []}}


def library_context(trust_anchors: str | Path | None) -> c2pa.Context:
    """A library context: the given PEM roots trusted, remote manifests never fetched, no thumbnails made
    (the library's default, a 1024-pixel one for the claim and one for each ingredient, adds ~100-600 KB to
    a file), the library's defaults otherwise. One context serves any number of reads."""
    settings: dict = {"verify": {"remote_manifest_fetch": False}, "builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": read_file(trust_anchors).decode("ascii", errors="replace")}
    return c2pa.Context.from_dict(settings)


def _certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file's bytes; anything else is a one-line error naming the file."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise InvalidInputError(f"{path}: not a PEM certificate file ({e})") from e


def _media_type(data: bytes) -> str | None:
    """The MIME type of the bytes of a format the C2PA library reads (`ingredient_format`), or None."""
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[4:8] == b"ftyp":
        return _BMFF_BRANDS.get(data[8:12])
    return _format(data)


def _format(data: bytes) -> str | None:
    """The MIME type of JPEG, PNG and WebP bytes, from their signature; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def _store(data: bytes, mime: str | None) -> bytes | None:
    """The manifest store embedded in JPEG, PNG or WebP bytes, or None."""
    if mime == "image/jpeg":
        return _jpeg_store(data)
    if mime == "image/png":
        return _png_chunk(data, b"caBX")
    return _riff_chunk(data, b"C2PA") if mime == "image/webp" else None


def _png_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The data of a PNG's first chunk of type ``kind`` (chunks: size, type, data, CRC)."""
    at = 8
    while at + 8 <= len(data):
        (size,) = struct.unpack_from(">I", data, at)
        if data[at + 4:at + 8] == kind:
            return data[at + 8:at + 8 + size]
        at += 12 + size
    return None


def _riff_chunk(data: bytes, kind: bytes) -> bytes | None:
    """The data of a RIFF (WebP) file's first chunk of type ``kind`` (chunks: type, size, data, pad byte)."""
    at = 12
    while at + 8 <= len(data):
        (size,) = struct.unpack_from("<I", data, at + 4)
        if data[at:at + 4] == kind:
            return data[at + 8:at + 8 + size]
        at += 8 + size + size % 2
    return None


def _jpeg_store(data: bytes) -> bytes | None:
    """The C2PA JUMBF box of a JPEG, reassembled from its APP11 segments (ISO 19566-5: "JP", box instance,
    packet sequence, then the box; packets after the first repeat the box header, which is dropped)."""
    boxes: dict[bytes, list[tuple[int, bytes]]] = {}
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xD9, 0xDA):  # to EOI / SOS
        (length,) = struct.unpack_from(">H", data, at + 2)
        segment = data[at + 4:at + 2 + length]
        if data[at + 1] == 0xEB and segment[:2] == b"JP":
            (sequence,) = struct.unpack_from(">I", segment, 4)
            boxes.setdefault(segment[2:4], []).append((sequence, segment[8:]))
        at += 2 + length
    for packets in boxes.values():
        packets.sort()
        first = packets[0][1]
        header = 16 if first[:4] == b"\x00\x00\x00\x01" else 8
        box = first + b"".join(packet[header:] for _, packet in packets[1:])
        if box[12:20] == _JUMBF_C2PA:
            return box
    return None


def _boxes(data: bytes, at: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(offset, size, header size) of the ISO BMFF / JUMBF boxes between ``at`` and ``end`` (a box: 4-byte size,
    4-byte type, then an 8-byte size when the first is 1, or to the end when it is 0); stops at a malformed one."""
    while at + 8 <= end:
        (size,), header = struct.unpack_from(">I", data, at), 8
        if size == 1 and at + 16 <= end:
            (size,), header = struct.unpack_from(">Q", data, at + 8), 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield at, size, header
        at += size


def _one_line(error: Exception) -> str:
    """An exception's message with its line breaks and runs of spaces folded."""
    return " ".join(str(error).split())
