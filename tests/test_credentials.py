"""Content Credentials (C2PA) on released files: a real test PKI (root, intermediate, leaf) made with
`cryptography`, real photos, the official c2pa-python library to sign originals and to validate."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import c2pa
import numpy as np
import pillow_heif
import pytest
import skimage
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from activeindex.credentials import (
    ALGORITHMS,
    DESCRIPTION,
    SigningMaterial,
    active_manifest_id,
    ingredient_format,
    manifest_store,
    sign_activated,
    validation,
)
from activeindex.errors import InvalidInputError

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PHOTOS = {"jpg": "astronaut.png", "png": "coffee.png", "webp": "chelsea.png"}
CREATED = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "activeindex tests")])


def _certificate(key, subject: str, issuer_key, issuer: str, *, ca: bool, eku: bool = True) -> x509.Certificate:
    """A certificate with the C2PA profile: CAs sign certificates; the leaf has a critical digitalSignature key
    usage and the emailProtection extended key usage; all have key identifiers."""
    now = dt.datetime.now(dt.UTC)
    usage = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                           "encipher_only", "decipher_only"), False)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if eku and not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(folder: Path, eku: bool = True) -> SigningMaterial:
    """A root CA (trust anchor), an intermediate CA and an ECDSA P-256 leaf: chain.pem (leaf, intermediate),
    key.pem, root.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate(root_key, "test root", root_key, "test root", ca=True)
    middle = _certificate(middle_key, "test intermediate", root_key, "test root", ca=True)
    leaf = _certificate(leaf_key, "test signer", middle_key, "test intermediate", ca=False, eku=eku)
    (folder / "chain.pem").write_bytes(_pem(leaf) + _pem(middle))
    (folder / "key.pem").write_bytes(_key_pem(leaf_key))
    (folder / "root.pem").write_bytes(_pem(root))
    return SigningMaterial(folder / "chain.pem", folder / "key.pem", trust_anchors=folder / "root.pem")


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> SigningMaterial:
    return make_pki(tmp_path_factory.mktemp("pki"))


def photo(ext: str, short_side: int = 256) -> np.ndarray:
    image = Image.open(SKIMAGE_DATA / PHOTOS[ext]).convert("RGB")
    scale = short_side / min(image.size)
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))


def save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path, FORMATS[path.suffix[1:]], **({"quality": 90} if path.suffix != ".png" else {}))
    return path


def activate(pixels: np.ndarray) -> np.ndarray:
    """Stands in for an activation: a few pixel values changed by one."""
    out = pixels.copy()
    out[8:24:3, 8:24:3] ^= 1
    return out


def sign_original(plain: Path, signed: Path, material: SigningMaterial) -> bytes:
    """A publisher's original with its own credentials (a `c2pa.created` manifest, the library's default
    thumbnail), signed with the same library; returns the manifest store the library wrote."""
    chain, key = material.read()
    definition = {"claim_generator_info": [{"name": "test camera", "version": "1.0"}], "title": plain.name,
                  "assertions": [{"label": "c2pa.actions",
                                  "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": CREATED}]}}]}
    mime = MIME[plain.suffix[1:]]
    with c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, key, None)) as signer, \
            c2pa.Builder(definition) as builder, open(plain, "rb") as source, open(signed, "w+b") as dest:
        return builder.sign(signer, mime, source, dest)


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def failures(report: dict) -> list[str]:
    return [item["code"] for item in report["validation_results"]["activeManifest"]["failure"]]


def actions(manifest: dict) -> list[dict]:
    [assertion] = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    return assertion["data"]["actions"]


@pytest.mark.parametrize("ext", list(FORMATS))
def test_a_released_file_names_its_signed_original_as_parent(tmp_path, material, ext):
    pixels = photo(ext)
    plain = save(tmp_path / f"plain.{ext}", pixels)
    original = tmp_path / f"original.{ext}"
    written = sign_original(plain, original, material)
    assert manifest_store(original) == written  # the store as embedded, reassembled from its segments / chunk
    original_id = active_manifest_id(original)
    activated = save(tmp_path / f"activated.{ext}", activate(decoded(original)))
    output = tmp_path / f".released.{ext}.tmp"  # a temp name: the format is read from the bytes

    label = sign_activated(original, activated, output, material, {"psnr": 44.1, "preset": "default"},
                           title=f"released.{ext}")

    assert label.startswith("urn:c2pa:") and label == active_manifest_id(output) != original_id
    report = validation(output, trust_anchors=material.trust_anchors)
    assert report["validation_state"] == "Trusted" and failures(report) == []
    passed = {item["code"] for item in report["validation_results"]["activeManifest"]["success"]}
    assert {"signingCredential.trusted", "claimSignature.validated", "assertion.dataHash.match"} <= passed
    manifest = report["manifests"][label]
    assert manifest["title"] == f"released.{ext}"
    [ingredient] = manifest["ingredients"]
    assert ingredient["title"] == original.name and ingredient["relationship"] == "parentOf"
    assert ingredient["active_manifest"] == original_id and ingredient["manifest_data"]["identifier"] == original_id
    assert ingredient["validation_results"]["activeManifest"]["failure"] == []
    assert actions(report["manifests"][original_id])[0]["action"] == "c2pa.created"  # the original's, carried
    opened, edited = actions(manifest)
    assert opened["action"] == "c2pa.opened" and opened["parameters"]["ingredients"]
    assert edited["action"] == "c2pa.edited" and edited["softwareAgent"]["name"] == "activeindex"
    assert edited["description"] == DESCRIPTION and edited["parameters"] == {"psnr": 44.1, "preset": "default"}
    np.testing.assert_array_equal(decoded(output), decoded(activated))  # credentials added, pixels untouched

    untrusted = validation(output)  # without the test root: signature and hashes valid, the signer unknown
    assert untrusted["validation_state"] == "Valid" and failures(untrusted) == ["signingCredential.untrusted"]


def test_an_original_without_credentials_is_an_ingredient_without_a_manifest(tmp_path, material):
    pixels = photo("png")
    original = save(tmp_path / "original.png", pixels)
    activated = save(tmp_path / "activated.png", activate(pixels))

    label = sign_activated(original, activated, activated, material)  # in place

    report = validation(activated, trust_anchors=material.trust_anchors)
    assert report["validation_state"] == "Trusted" and failures(report) == []
    assert list(report["manifests"]) == [label]
    [ingredient] = report["manifests"][label]["ingredients"]
    assert ingredient["title"] == "original.png" and ingredient["relationship"] == "parentOf"
    assert "active_manifest" not in ingredient and "manifest_data" not in ingredient
    assert "parameters" not in actions(report["manifests"][label])[1]
    np.testing.assert_array_equal(decoded(activated), activate(pixels))


@pytest.mark.parametrize("ext", list(FORMATS))
def test_plain_and_signed_files(tmp_path, material, ext):
    plain = save(tmp_path / f"plain.{ext}", photo(ext, 128))
    assert manifest_store(plain) is None and active_manifest_id(plain) is None and validation(plain) == {}
    released = tmp_path / f"released.{ext}"
    label = sign_activated(plain, plain, released, material)
    store = manifest_store(released)
    assert store[4:8] == b"jumb" and int.from_bytes(store[:4], "big") == len(store)
    assert active_manifest_id(released) == label
    assert c2pa.Reader(MIME[ext], io.BytesIO(released.read_bytes()), store).json()  # the store, read on its own


def one_line_error(call, *names: object) -> str:
    with pytest.raises(InvalidInputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(str(name) in message for name in names), message
    return message


def test_bad_signing_material_is_a_one_line_error_naming_the_file(tmp_path, material):
    one_line_error(lambda: SigningMaterial.load(tmp_path / "missing.pem", material.private_key),
                   tmp_path / "missing.pem")
    one_line_error(lambda: SigningMaterial.load(material.certificate_chain, tmp_path / "nokey.pem"),
                   tmp_path / "nokey.pem")
    other = make_pki(tmp_path / "other")
    assert "does not match" in one_line_error(lambda: SigningMaterial.load(material.certificate_chain,
                                                                           other.private_key), other.private_key)
    one_line_error(lambda: SigningMaterial.load(material.private_key, material.private_key), material.private_key)
    one_line_error(lambda: SigningMaterial.load(material.certificate_chain, material.private_key, "ps256"),
                   material.private_key, "ps256")
    one_line_error(lambda: SigningMaterial.load(material.certificate_chain, material.private_key, "rs1"), "rs1")
    one_line_error(lambda: SigningMaterial.load(material.certificate_chain, material.private_key,
                                                trust_anchors=material.private_key), material.private_key)
    assert SigningMaterial.load(material.certificate_chain, material.private_key, "ES256").algorithm == "es256"
    assert set(ALGORITHMS) == {algorithm.name.lower() for algorithm in c2pa.C2paSigningAlg}


def test_a_leaf_certificate_c2pa_refuses_is_named(tmp_path):
    material = make_pki(tmp_path / "pki", eku=False)  # no extended key usage: not a C2PA signing certificate
    image = save(tmp_path / "image.jpg", photo("jpg", 64))
    message = one_line_error(lambda: sign_activated(image, image, tmp_path / "out.jpg", material),
                             material.certificate_chain, "extended key usage")
    assert "refused" in message and not (tmp_path / "out.jpg").exists()


def test_other_formats_are_refused(tmp_path, material):
    image = save(tmp_path / "image.png", photo("png", 64))
    bmp = tmp_path / "original.bmp"
    Image.open(image).save(bmp)
    assert ingredient_format(bmp) is None
    one_line_error(lambda: sign_activated(bmp, image, tmp_path / "out.png", material), bmp, "convert it")
    one_line_error(lambda: sign_activated(image, bmp, tmp_path / "out.png", material), bmp, "JPEG, PNG or WebP")
    assert manifest_store(bmp) is None and validation(bmp) == {}


@pytest.mark.parametrize(("suffix", "mime"), [("heic", "image/heic"), ("avif", "image/avif"), ("tiff", "image/tiff"),
                                              ("gif", "image/gif")])
def test_phone_tiff_and_gif_originals_are_named_as_ingredients(tmp_path, material, suffix, mime):
    pixels = photo("png", 64)
    original, activated = tmp_path / f"original.{suffix}", save(tmp_path / "activated.png", activate(pixels))
    if suffix == "heic":
        pillow_heif.from_pillow(Image.fromarray(pixels)).save(original, quality=90)
    else:
        Image.fromarray(pixels).save(original)
    assert ingredient_format(original) == mime
    label = sign_activated(original, activated, tmp_path / "out.png", material)
    report = validation(tmp_path / "out.png", trust_anchors=material.trust_anchors)
    assert report["validation_state"] == "Trusted"
    assert [i["title"] for i in report["manifests"][label]["ingredients"]] == [original.name]
