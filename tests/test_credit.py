"""The credit of image files (credit.py) on real photos: EXIF, IPTC and XMP written by exiftool, copies made
the ways copiers make them (a re-save keeping the EXIF, a crop stripped of its metadata, a changed copyright),
Content Credentials signed with the tests' own PKI and validated by c2pa-python with and without its root."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from activeindex.credentials import active_manifest_id, sign_activated
from activeindex.credit import FIELDS, Credit, compare, read_credits, words
from activeindex.errors import InvalidInputError
from activeindex.release import copy_metadata

from .test_credentials import activate, make_pki, sign_original

CREDIT = {  # what a photo desk writes into its files (exiftool tags; a list: a repeated or list-valued tag)
    "EXIF:Artist": "Jane Doe; John Roe", "EXIF:Copyright": "(c) 2024 Test Agency",
    "IPTC:By-line": ["Jane Doe", "John Roe"], "IPTC:CopyrightNotice": "© 2024 Test Agency",
    "IPTC:Credit": "Test Agency", "IPTC:Source": "Test Agency archive",
    "XMP-dc:Creator": ["Jane Doe", "John Roe"], "XMP-dc:Rights": "Copyright 2024 Test Agency. All rights reserved.",
    "XMP-photoshop:Credit": "Test Agency", "XMP-photoshop:Source": "Test Agency archive"}
READ = {  # the same, as read (our field names)
    "EXIF:Artist": ("Jane Doe; John Roe",), "EXIF:Copyright": ("(c) 2024 Test Agency",),
    "IPTC:By-line": ("Jane Doe", "John Roe"), "IPTC:CopyrightNotice": ("© 2024 Test Agency",),
    "IPTC:Credit": ("Test Agency",), "IPTC:Source": ("Test Agency archive",),
    "XMP:dc:creator": ("Jane Doe", "John Roe"), "XMP:dc:rights": ("Copyright 2024 Test Agency. All rights reserved.",),
    "XMP:photoshop:Credit": ("Test Agency",), "XMP:photoshop:Source": ("Test Agency archive",)}
IPTC_XMP = {name for name in READ if not name.startswith("EXIF")}
OURS = "test signer"  # the common name of make_pki's signing certificate


def write_tags(path: Path, tags: dict) -> Path:
    """Write metadata into ``path`` with exiftool (in place)."""
    arguments = [f"-{tag}={value}" for tag, values in tags.items()
                 for value in (values if isinstance(values, list) else [values])]
    subprocess.run(["exiftool", "-q", "-overwrite_original", *arguments, str(path)], check=True, capture_output=True)
    return path


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    Image.fromarray(pixels).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}), **options)
    return path


def one(path: Path, trust_anchors: Path | None = None) -> Credit:
    [credit] = read_credits([path], trust_anchors)
    assert credit.error is None, credit.error
    return credit


@pytest.fixture(scope="module")
def released(tmp_path_factory, small_photos) -> Path:
    """A released JPEG of a real photo, with its agency's credit in EXIF, IPTC and XMP."""
    return write_tags(save(tmp_path_factory.mktemp("credit") / "released.jpg", small_photos[0]), CREDIT)


@pytest.fixture(scope="module")
def signed(tmp_path_factory, small_photos) -> SimpleNamespace:
    """A publisher's credited original signed with its own credentials (a `c2pa.created` manifest), and its
    released file: activated, its metadata copied, signed with the original as its parent ingredient."""
    folder = tmp_path_factory.mktemp("signed")
    material = make_pki(folder / "pki")
    plain = write_tags(save(folder / "plain.jpg", small_photos[1]), CREDIT)
    original = folder / "original.jpg"
    sign_original(plain, original, material)
    released = save(folder / "activated.jpg", activate(np.asarray(Image.open(original))))
    copy_metadata(original, released)
    label = sign_activated(original, released, released, material)
    return SimpleNamespace(folder=folder, material=material, original=original, released=released, label=label,
                           original_label=active_manifest_id(original))


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])
def test_the_credit_exiftool_wrote_is_read_back(tmp_path, small_photos, suffix):
    png = {"PNG:Author": "Jane Doe", "PNG:Copyright": "(c) Test Agency"} if suffix == "png" else {}  # its own text
    path = write_tags(save(tmp_path / f"photo.{suffix}", small_photos[2]), CREDIT | png)
    credit = one(path)
    if suffix == "jpg":
        assert credit.fields == READ
    elif suffix == "png":
        assert credit.fields == READ | {"PNG:Author": ("Jane Doe",), "PNG:Copyright": ("(c) Test Agency",)}
    else:  # WebP has no place for IPTC-IIM
        assert credit.fields == {k: v for k, v in READ.items() if not k.startswith("IPTC")}
    assert credit.manifest is None and credit.error is None
    assert {f.name for f in FIELDS} >= set(credit.fields)


def test_a_batch_reads_in_order_and_unreadable_files_are_errors_with_a_reason(tmp_path, released):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    odd = tmp_path / "-odd näme.jpg"  # read as a file, never as an option
    shutil.copy(released, odd)
    paths = [released, tmp_path / "missing.jpg", tmp_path / "empty.jpg", tmp_path / "folder", odd, released]

    credits = read_credits(paths, batch_size=4)  # two exiftool calls

    assert [c.path for c in credits] == [str(p) for p in paths]
    assert [c.error for c in credits] == [None, "no such file", "File is empty", "not a file", None, None]
    assert credits[0].fields == credits[4].fields == credits[5].fields == READ
    assert credits[1:4] == [Credit(str(p), error=e) for p, e in zip(paths[1:4], ["no such file", "File is empty",
                                                                             "not a file"])]


def test_exiftool_and_the_trust_anchors_are_checked_before_any_file(tmp_path, released, monkeypatch):
    (tmp_path / "roots.pem").write_text("not a certificate")
    with pytest.raises(InvalidInputError, match=r"roots\.pem: not a PEM certificate file"):
        read_credits([released], tmp_path / "roots.pem")
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without exiftool
    with pytest.raises(InvalidInputError, match="exiftool is needed to read the credit of image files"):
        read_credits([released])


def test_words_ignore_case_spacing_punctuation_and_copyright_marks():
    assert words("(C)  2024 Test\tAgency.") == words("© 2024 test agency") == words("Copyright 2024 TEST AGENCY")
    assert words("Copyright 2024 Test Agency. All rights reserved.") == ("2024", "test", "agency")
    assert words("\uff34\uff45\uff53\uff54 Agency") == ("test", "agency")  # full-width letters, NFKC-normalised
    assert words("©") == ()


# ---------------------------------------------------------------- comparing copies with their source


def test_a_resave_keeping_the_exif_has_kept_the_credit(tmp_path, released):
    image = Image.open(released)
    copy = tmp_path / "resaved.jpg"
    image.save(copy, quality=75, exif=image.info["exif"])  # what a site's re-encoder that keeps EXIF writes

    check = compare(one(copy), one(released))

    assert check.status == "kept" and set(check.differing) == IPTC_XMP and check.chain is None


def test_a_crop_stripped_of_its_metadata_has_had_its_credit_removed(tmp_path, released):
    copy = tmp_path / "crop.png"
    Image.open(released).crop((20, 10, 170, 160)).save(copy)
    assert one(copy).fields == {}

    check = compare(one(copy), one(released))

    assert check.status == "removed" and set(check.differing) == set(READ)


@pytest.mark.parametrize("tags, differing", [
    ({"EXIF:Copyright": "(c) 2025 Copy Shop Ltd"}, ("EXIF:Copyright",)),  # one notice replaced, others kept
    ({"XMP-dc:Creator": ["Jane Doe", "Someone Else"]}, ("XMP:dc:creator",)),  # another creator beside hers
    ({"IPTC:Credit": "Copy Shop"}, ("IPTC:Credit",)),  # another credit line
], ids=["copyright", "creator", "credit line"])
def test_a_copy_naming_another_has_its_credit_changed(tmp_path, released, tags, differing):
    copy = write_tags(Path(shutil.copy(released, tmp_path / "copy.jpg")), tags)

    check = compare(one(copy), one(released))

    assert check.status == "changed" and check.differing == differing


def test_a_stripped_copy_naming_someone_else_has_its_credit_changed(tmp_path, released):
    copy = write_tags(save(tmp_path / "copy.jpg", np.asarray(Image.open(released))), {"EXIF:Artist": "Copy Shop"})
    check = compare(one(copy), one(released))
    assert check.status == "changed" and "EXIF:Artist" in check.differing


def test_the_same_credit_in_other_standards_is_kept(tmp_path, released, small_photos):
    """The source says it in EXIF only; the copy in XMP and IPTC only, written differently."""
    source = write_tags(save(tmp_path / "source.jpg", small_photos[0]),
                        {"EXIF:Artist": "Jane Doe; John Roe", "EXIF:Copyright": "(c) 2024 Test Agency"})
    copy = write_tags(save(tmp_path / "copy.jpg", small_photos[0]),
                      {"XMP-dc:Creator": ["JOHN ROE", "jane  doe"], "IPTC:CopyrightNotice": "© Test Agency"})

    check = compare(one(copy), one(source))

    assert check.status == "kept"
    assert check.differing == ("EXIF:Artist", "EXIF:Copyright", "IPTC:CopyrightNotice", "XMP:dc:creator")


def test_a_source_without_credit_has_none_to_check(tmp_path, small_photos):
    source = save(tmp_path / "source.jpg", small_photos[3])
    copy = write_tags(save(tmp_path / "copy.jpg", small_photos[3]), {"EXIF:Copyright": "(c) Copy Shop"})
    assert compare(one(copy), one(source)).status == compare(one(source), one(source)).status == "none"


def test_an_unreadable_file_makes_the_check_unknown_with_its_reason(tmp_path, released):
    missing, good = read_credits([tmp_path / "missing.jpg", released])
    check = compare(missing, good)
    assert (check.status, check.reason) == ("unknown", f"{tmp_path / 'missing.jpg'}: no such file")
    assert compare(good, missing).status == "unknown"


# ---------------------------------------------------------------- Content Credentials


def test_a_manifest_is_untrusted_without_its_root_valid_with_it_and_invalid_tampered(signed):
    tampered = write_tags(Path(shutil.copy(signed.released, signed.folder / "tampered.jpg")),
                          {"EXIF:Copyright": "(c) Copy Shop"})  # edits bytes the manifest's hash binds

    untrusted, tampered = read_credits([signed.released, tampered])
    valid = one(signed.released, signed.material.trust_anchors)

    assert (untrusted.manifest.state, untrusted.manifest.failures) == ("untrusted", ("signingCredential.untrusted",))
    assert (valid.manifest.state, valid.manifest.failures) == ("valid", ())
    assert valid.manifest.label == signed.label and valid.manifest.signer == OURS
    assert valid.manifest.parent == signed.original_label  # the original's own manifest, its parent ingredient
    assert valid.fields == READ  # the credit the released file carries beside its manifest
    assert tampered.manifest.label == signed.label and tampered.manifest.state == "invalid"
    assert "assertion.dataHash.mismatch" in tampered.manifest.failures
    check = compare(tampered, valid)
    assert (check.status, check.chain, check.differing) == ("changed", "released", ("EXIF:Copyright",))


def test_a_copy_of_the_original_chains_to_the_original(signed):
    source = one(signed.released)
    check = compare(one(signed.original), source)
    assert (check.status, check.chain) == ("kept", "original") and check.differing == ("C2PA",)
    assert compare(source, source) == compare(one(signed.released), source)  # the released file itself
    assert compare(source, source).chain == "released" and compare(source, source).differing == ()


def test_a_copy_signed_by_another_tool_keeps_the_credit_when_it_names_the_released_file(signed, tmp_path):
    """A stripped re-save: its manifest alone carries the credit when it names the released file as its parent;
    a manifest of someone else's that names neither file is another's credit."""
    other = make_pki(tmp_path / "other-pki")
    stripped = save(tmp_path / "stripped.jpg", np.asarray(Image.open(signed.released)))
    named = tmp_path / "named.jpg"
    sign_activated(signed.released, stripped, named, other)
    unrelated = tmp_path / "unrelated.jpg"
    sign_original(stripped, unrelated, other)
    source = one(signed.released, signed.material.trust_anchors)

    chained, foreign = read_credits([named, unrelated], signed.material.trust_anchors)

    assert chained.fields == {} and chained.manifest.parent == signed.label
    assert chained.manifest.state == "untrusted"  # another root than the one configured
    assert (compare(chained, source).status, compare(chained, source).chain) == ("kept", "released")
    check = compare(foreign, source)
    assert (check.status, check.chain) == ("changed", None) and check.differing == (*READ, "C2PA")


def test_credit_reports_are_json_ready(signed):
    data = one(signed.released).to_dict()
    assert data["fields"]["EXIF:Copyright"] == ("(c) 2024 Test Agency",) and data["error"] is None
    assert data["manifest"]["labels"] == sorted({signed.label, signed.original_label})


def test_the_servers_trust_anchors_are_trusted_when_it_signs(signed):
    """`serve --c2pa-trust` (ServiceConfig.trust_anchors): the signing material trusts them unless it names its own."""
    from activeindex.service.app import ServiceConfig, _signing

    bare = replace(signed.material, trust_anchors=None)
    config = ServiceConfig(signing=bare, trust_anchors=signed.material.trust_anchors)
    assert _signing(config) == signed.material
    own = replace(signed.material, trust_anchors=signed.folder / "other.pem")
    assert _signing(replace(config, signing=own)) == own and _signing(replace(config, trust_anchors=None)) == bare
