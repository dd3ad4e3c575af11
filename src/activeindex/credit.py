"""The credit an image file carries, and whether a copy kept its source's (docs/credit.md).

Read, a batch of files at a time (`read_credits`):

- the metadata fields of `FIELDS`, with exiftool (one call per batch, ``-json``): EXIF Artist and Copyright (a
  PNG's own Artist, Author and Copyright text too, where exiftool writes them in a PNG), IPTC By-line,
  CopyrightNotice, Credit and Source, XMP dc:creator, dc:rights, photoshop:Credit and photoshop:Source;
- the C2PA manifest store, with c2pa-python under the trust anchors given (`Manifest`): the active manifest,
  its state in three words (``valid``: signature, hashes and a trusted signer; ``untrusted``: signature and
  hashes verify, the signer chains to no configured anchor; ``invalid``: anything else, a tampered file or
  a store the library cannot read), its signer, and every manifest label it holds or its ingredients name.

Compare (`compare`): the fields fill four roles (creator, copyright, credit line, source) and Content
Credentials a fifth; the same value in EXIF, IPTC or XMP fills the same role. Values match when the words of
one, case, spacing, punctuation and copyright marks aside, run within the other's (``© Agency`` matches
``(c) 2024 Agency. All rights reserved.``); creators are split at ``;``. A role is kept when every value
the copy holds in it matches one of the source's, changed when one does not (another name beside the
owner's is another's credit). Manifests match when the copy's store holds or names the released file's
manifest (chain ``released``) or its original's (``original``).

A file that cannot be read is a `Credit` with an ``error``, never an exception: one bad suspect never stops
a batch. A missing exiftool is the one error raised, before any file is read.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import c2pa

from .credentials import check_trust_anchors, library_context, read_report
from .errors import InvalidInputError
from .release import require_exiftool

__all__ = ["Field", "FIELDS", "ROLES", "STATUSES", "STATES", "Manifest", "Credit", "CreditCheck", "read_credits",
           "compare", "words"]

logger = logging.getLogger(__name__)

BATCH = 256  # files per exiftool call: its start (~0.2 s) is shared, its command line stays far below ARG_MAX
ROLES = ("creator", "copyright", "credit", "source", "credentials")
STATUSES = ("kept", "removed", "changed", "none", "unknown")
STATES = ("valid", "untrusted", "invalid")
C2PA_FIELD = "C2PA"  # the name a differing manifest has in `CreditCheck.differing`
_STATES = {"Trusted": "valid", "Valid": "untrusted"}  # c2pa-python's validation_state; anything else: invalid
_COPYRIGHT_MARKS = re.compile(r"©|\(c\)|\bcopyright\b|\ball rights reserved\b")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Field:
    """One metadata field read: its name in reports, its exiftool tag (family 1 group), its role."""

    name: str
    tag: str
    role: str


FIELDS = (
    Field("EXIF:Artist", "IFD0:Artist", "creator"),
    Field("EXIF:Copyright", "IFD0:Copyright", "copyright"),
    Field("PNG:Artist", "PNG:Artist", "creator"),
    Field("PNG:Author", "PNG:Author", "creator"),
    Field("PNG:Copyright", "PNG:Copyright", "copyright"),
    Field("IPTC:By-line", "IPTC:By-line", "creator"),
    Field("IPTC:CopyrightNotice", "IPTC:CopyrightNotice", "copyright"),
    Field("IPTC:Credit", "IPTC:Credit", "credit"),
    Field("IPTC:Source", "IPTC:Source", "source"),
    Field("XMP:dc:creator", "XMP-dc:Creator", "creator"),
    Field("XMP:dc:rights", "XMP-dc:Rights", "copyright"),
    Field("XMP:photoshop:Credit", "XMP-photoshop:Credit", "credit"),
    Field("XMP:photoshop:Source", "XMP-photoshop:Source", "source"),
)


@dataclass(frozen=True)
class Manifest:
    """A file's C2PA manifest store, as c2pa-python validated it."""

    label: str | None  # the active manifest's label (None: a store the library could not read)
    state: str  # `STATES`: valid, untrusted or invalid
    failures: tuple[str, ...] = ()  # the active manifest's failure codes, or why the store could not be read
    signer: str | None = None  # the signing certificate's common name (else its issuer)
    parent: str | None = None  # the manifest of its parentOf ingredient (what it was edited from), if any
    labels: frozenset[str] = frozenset()  # every manifest the store holds or its ingredients name


@dataclass(frozen=True)
class Credit:
    """The credit one file carries: its fields' values as read (only the fields it has), its manifest, or the
    reason it could not be read."""

    path: str
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # `Field.name` -> values
    manifest: Manifest | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready: ``{"path", "fields", "manifest", "error"}`` (the labels sorted)."""
        data = asdict(self)
        if self.manifest is not None:
            data["manifest"]["labels"] = sorted(self.manifest.labels)
        return data


@dataclass(frozen=True)
class CreditCheck:
    """A copy's credit against its source's (`compare`)."""

    status: str  # `STATUSES`
    differing: tuple[str, ...] = ()  # the fields whose values differ (`FIELDS` order), then "C2PA"
    chain: str | None = None  # what the copy's manifest chains to: "released", "original", or None
    reason: str | None = None  # why the status is "unknown"


# ---------------------------------------------------------------- reading

def read_credits(paths: Iterable[str | os.PathLike], trust_anchors: str | os.PathLike | None = None,
                 batch_size: int = BATCH) -> list[Credit]:
    """The credit of each file, in order: one exiftool call per ``batch_size`` files, one C2PA library context
    for all. A scan calls it once per batch of suspects, so memory follows the batch, never the scan.

    Args:
        paths: image files, any format exiftool reads (manifests: the formats the C2PA library reads).
        trust_anchors: a PEM file of root certificates: manifests signed under them read ``valid``.
        batch_size: files per exiftool call.

    Returns:
        one `Credit` per path; a file that cannot be read has its ``error``.

    Raises:
        InvalidInputError: exiftool is missing, or ``trust_anchors`` is not a PEM certificate file.

    Example:
        >>> [credit] = read_credits(["released/cat.jpg"])
        >>> credit.fields["EXIF:Copyright"], credit.manifest.state
        (('(c) Test Agency',), 'untrusted')
    """
    exiftool = require_exiftool("read the credit of image files")
    if trust_anchors is not None:
        check_trust_anchors(trust_anchors)
    paths = [os.fspath(p) for p in paths]
    credits: list[Credit] = []
    with library_context(trust_anchors) as context:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            read = _exiftool_fields(exiftool, chunk)
            credits += [_credit(path, read[path], context) for path in chunk]
    return credits


def _credit(path: str, read: dict | str, context: c2pa.Context) -> Credit:
    """One file's credit from exiftool's answer (its JSON object, or why it read nothing) and its manifest."""
    if isinstance(read, str):
        return Credit(path, error=read)
    if "ExifTool:Error" in read:
        return Credit(path, error=str(read["ExifTool:Error"]))
    fields = {f.name: values for f in FIELDS if (values := _strings(read.get(f.tag)))}
    return Credit(path, fields, _read_manifest(path, context))


def _exiftool_fields(exiftool: str, paths: Sequence[str]) -> dict[str, dict | str]:
    """path -> exiftool's JSON object for it, or the reason exiftool read nothing from it (one call)."""
    answers: dict[str, dict | str] = {p: "no such file" if not os.path.exists(p) else "not a file" for p in paths
                                      if not os.path.isfile(p)}
    asked = {os.path.abspath(p): p for p in paths if p not in answers}  # absolute: never read as an option
    if not asked:
        return answers
    command = [exiftool, "-json", "-G1", *(f"-{f.tag}" for f in FIELDS),
               "-ExifTool:Error", *asked]
    timeout = 60 + 2 * len(asked)
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout)
        objects = json.loads(done.stdout.decode("utf-8", "surrogateescape") or "[]")
    except subprocess.TimeoutExpired:
        return answers | dict.fromkeys(asked.values(), f"exiftool took longer than {timeout} s")
    except ValueError:  # not JSON: exiftool itself failed
        reason = _last_line(done.stderr) or "exiftool failed"
        return answers | dict.fromkeys(asked.values(), f"exiftool: {reason}")
    found = {_echoed(item.get("SourceFile", "")): item for item in objects if isinstance(item, dict)}
    errors = _stderr_errors(done.stderr)
    for absolute, path in asked.items():
        answers[path] = found.get(_echoed(absolute)) or f"exiftool: {errors.get(_echoed(absolute), 'read nothing')}"
    return answers


def _echoed(path: str) -> str:
    """A path as exiftool echoes it: bytes that are not UTF-8 become "?"."""
    return os.fsencode(path).decode("utf-8", "replace").replace("\ufffd", "?")


def _stderr_errors(stderr: bytes) -> dict[str, str]:
    """path -> reason, from exiftool's ``Error: REASON - PATH`` lines."""
    errors = {}
    for line in stderr.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("Error: ") and " - " in line:
            reason, _, path = line[len("Error: "):].rpartition(" - ")
            errors[_echoed(path)] = reason
    return errors


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def _strings(value) -> tuple[str, ...]:
    """A field's values as text: a list's items, a number's digits; blanks dropped."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    return tuple(text for item in items if (text := str(item).strip()))


def _read_manifest(path: str, context: c2pa.Context) -> Manifest | None:
    """The file's manifest store as validated under ``context``; None without one."""
    try:
        report = read_report(path, context)
    except InvalidInputError as e:
        return Manifest(None, "invalid", (str(e).removeprefix(f"{path}: "),))
    return _manifest(report) if report else None


def _manifest(report: dict) -> Manifest:
    """A `Manifest` from c2pa-python's report of a store."""
    label, manifests = report.get("active_manifest"), report.get("manifests", {})
    results = report.get("validation_results", {}).get("activeManifest", {})
    failures = tuple(item["code"] for item in results.get("failure", report.get("validation_status", [])))
    active = manifests.get(label, {})
    signature = active.get("signature_info", {})
    parents = [i.get("active_manifest") for i in active.get("ingredients", []) if i.get("relationship") == "parentOf"]
    named = {i["active_manifest"] for m in manifests.values() for i in m.get("ingredients", [])
             if "active_manifest" in i}
    state = _STATES.get(report.get("validation_state"), "invalid") if label in manifests else "invalid"
    return Manifest(label, state, failures, signature.get("common_name") or signature.get("issuer"),
                    parents[0] if parents else None, frozenset(manifests) | named)


# ---------------------------------------------------------------- comparing

def compare(suspect: Credit, source: Credit) -> CreditCheck:
    """Whether a copy kept its source's credit.

    ``kept``: the owner's credit is present (a role the source fills holds the source's values in the copy, or
    the copy's manifest chains to the released file or its original) and no role holds another's; ``changed``:
    a role the source fills holds a value of another in the copy (another creator, another copyright notice,
    a manifest that chains to neither), or the copy keeps none of the source's credit yet names someone;
    ``removed``: the source carried credit, the copy carries none; ``none``: the source carries no credit to
    check; ``unknown``: a file's credit could not be read (``reason``).

    Args:
        suspect: the copy's credit (`read_credits`).
        source: the credit of the file it copies: the released file (or a passive reference's original).

    Example:
        >>> compare(Credit("copy.jpg", {"EXIF:Copyright": ("© Agency",)}),
        ...         Credit("cat.jpg", {"IPTC:CopyrightNotice": ("(c) 2024 Agency",)}))
        CreditCheck(status='kept', differing=('EXIF:Copyright', 'IPTC:CopyrightNotice'), chain=None, reason=None)
    """
    if suspect.error is not None or source.error is not None:
        failed = suspect if suspect.error is not None else source
        return CreditCheck("unknown", reason=f"{failed.path}: {failed.error}")
    ours, theirs = _roles(source, source=True), _roles(suspect, source=False)
    return CreditCheck(_status(theirs, ours), _differing(suspect, source), _chain(suspect.manifest, source.manifest))


def words(value: str) -> tuple[str, ...]:
    """A value's words, as compared: Unicode-normalised, case-folded, copyright marks and punctuation dropped.

    Example:
        >>> words("(c) 2024  Test Agency. All rights reserved.")
        ('2024', 'test', 'agency')
    """
    text = unicodedata.normalize("NFKC", value).casefold()
    return tuple(_WORD.findall(_COPYRIGHT_MARKS.sub(" ", text)))


def _status(theirs: dict[str, set], ours: dict[str, set]) -> str:
    """The status from the copy's and the source's role values."""
    if not ours:
        return "none"
    found = {role: _matches(role, theirs[role], values) for role, values in ours.items() if role in theirs}
    if False in found.values():
        return "changed"
    if True in found.values():
        return "kept"
    return "changed" if theirs else "removed"  # none of the owner's credit, yet someone else's


def _matches(role: str, theirs: set, ours: set) -> bool:
    """Whether the copy's values of a role are the source's: each matches one of the source's (one other
    copyright notice beside the owner's is another's credit); manifests: the copy's store holds or names the
    source's manifest or its original's (a store also holds the manifests of later edits)."""
    if role == "credentials":
        return bool(theirs & ours)
    return all(any(_within(a, b) or _within(b, a) for b in ours) for a in theirs)


def _within(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether the words ``inner`` run, in order and together, within ``outer``."""
    n = len(inner)
    return any(outer[i:i + n] == inner for i in range(len(outer) - n + 1))


def _roles(credit: Credit, source: bool) -> dict[str, set]:
    """role -> the credit's normalised values, the empty roles left out; its manifests: a source's own and its
    original's, a copy's every label its store holds or names."""
    roles: dict[str, set] = {}
    for f in FIELDS:
        roles.setdefault(f.role, set()).update(_normalised(credit, f))
    manifest = credit.manifest
    if manifest is not None:
        roles["credentials"] = ({manifest.label, manifest.parent} if source else set(manifest.labels)) - {None}
    return {role: values for role, values in roles.items() if values}


def _normalised(credit: Credit, f: Field) -> set[tuple[str, ...]]:
    """A field's values as word tuples (creators split at ``;``), the empty ones dropped."""
    values = credit.fields.get(f.name, ())
    if f.role == "creator":
        values = [part for value in values for part in value.split(";")]
    return {w for value in values if (w := words(value))}


def _differing(suspect: Credit, source: Credit) -> tuple[str, ...]:
    """The fields whose normalised values differ, then "C2PA" when the active manifests differ."""
    names = [f.name for f in FIELDS if _normalised(suspect, f) != _normalised(source, f)]
    labels = [credit.manifest.label if credit.manifest else None for credit in (suspect, source)]
    return (*names, C2PA_FIELD) if labels[0] != labels[1] else tuple(names)


def _chain(suspect: Manifest | None, source: Manifest | None) -> str | None:
    """"released" when the copy's store holds or names the released file's manifest, "original" when its
    original's, else None."""
    if suspect is None or source is None:
        return None
    if source.label is not None and source.label in suspect.labels:
        return "released"
    return "original" if source.parent is not None and source.parent in suspect.labels else None
