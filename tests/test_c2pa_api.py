"""The C2PA Soft Binding Resolution API (service/c2pa.py) through a real server, checked against the
specification's own schemas (`specs/`), with real photos activated and signed with a test PKI,
the real SSCD model, schemathesis, the `activeindex fingerprint` command and c2pa-python reading the stores."""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import c2pa
import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection, cli
from activeindex.binding import ALG, decode_binding, encode_binding
from activeindex.credentials import SOFT_BINDING, manifest_store, validation
from activeindex.edits import apply_edit
from activeindex.errors import InvalidInputError
from activeindex.imageio import load_image
from activeindex.service.c2pa import PREFIX, similarity_score

from .conftest import TEST_FACTORY, TOKEN, start_server, stop_server
from .test_credentials import make_pki

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"  # the specifications, verbatim (their README names the sources and licences)
API = json.loads((SPECS / "c2pa-soft-binding-resolution-api.openapi.json").read_text())
READ = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = {("/matches/byBinding", "get"), ("/matches/byBinding", "post"), ("/matches/byContent", "post"),
              ("/manifests/{manifestId}", "get"), ("/services/supportedAlgorithms", "get")}


def spec_schema(name: str) -> dict:
    """A JSON Schema of the specification's component ``name``, its references resolved in the spec."""
    return {"$ref": f"#/components/schemas/{name}", "components": API["components"]}


def check_result(response: httpx.Response) -> list[dict]:
    """A 200 of a matches operation, as the spec's ``c2pa.softBindingQueryResult`` and no more: its matches."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    jsonschema.validate(body, spec_schema("c2pa.softBindingQueryResult"))
    assert set(body) == {"matches"}
    for match in body["matches"]:
        assert set(match) == {"manifestId", "similarityScore"}  # no endpoint: this service holds the manifests
        assert isinstance(match["similarityScore"], int) and 50 <= match["similarityScore"] <= 100
    return body["matches"]


def check_error(response: httpx.Response, status: int) -> str:
    """An error as the service answers every one: the status, JSON ``{"detail": one line}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"} and "\n" not in response.json()["detail"]
    return response.json()["detail"]


def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def signed(tmp_path_factory, small_photos, training_npy) -> SimpleNamespace:
    """A collection: photos 0 and 1 (JPEG) activated and signed (ids 1, 2), photo 2 (PNG) passive (id 3)."""
    folder = tmp_path_factory.mktemp("c2pa")
    originals = [folder / "photo0.jpg", folder / "photo1.jpg", folder / "photo2.png"]
    for path, image in zip(originals[:2], small_photos):
        path.write_bytes(_jpeg(image))
    Image.fromarray(small_photos[2]).save(originals[2])
    pki = make_pki(folder / "pki")
    collection = Collection.create(folder / "col", TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    report = collection.activate(originals[:2], folder / "col" / "activated", ActivationConfig(iterations=2),
                                 signing=pki)
    passive = collection.add(originals[2:])
    collection.close()
    assert not report.failed and all(r.manifest_id for r in report.records)
    return SimpleNamespace(root=folder / "col", folder=folder, pki=pki, active=report.records,
                           passive=passive.records[0], codec=collection.manifest["codec_fingerprint"][:12])


@pytest.fixture(scope="module")
def url(signed):
    process, address = start_server(signed.root)
    yield address
    stop_server(process)


@pytest.fixture(scope="module")
def edited_copy(signed) -> bytes:
    """A brightened JPEG of photo 0's released (signed) file: what a Content Credentials tool is shown."""
    return _jpeg(apply_edit("brightness_2.0", load_image(signed.active[0].activated_path)), quality=80)


def by_content(url: str, data: bytes, media_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(f"{url}{PREFIX}/matches/byContent", content=data, headers={"Content-Type": media_type},
                      params=params, timeout=120)


# ---------------------------------------------------------------- the published interface


def test_the_service_openapi_lists_the_specs_operations(url):
    """/openapi.json: the spec's paths, operationIds, parameters, body media types, and its statuses at least."""
    ours = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert {(p.removeprefix(PREFIX), m) for p in ours if p.startswith(PREFIX) for m in ours[p]} == OPERATIONS
    for path, method in OPERATIONS:
        spec, served = API["paths"][path][method], ours[f"{PREFIX}{path}"][method]
        assert served["operationId"] == spec["operationId"]
        assert ({(p["name"], p["in"], p.get("required", False)) for p in served.get("parameters", [])}
                == {(p["name"], p["in"], p.get("required", False)) for p in spec.get("parameters", [])})
        for parameter in served.get("parameters", []):
            [theirs] = [p for p in spec["parameters"] if p["name"] == parameter["name"]]
            assert parameter["schema"] == theirs["schema"]
        if "requestBody" in spec:
            assert set(served["requestBody"]["content"]) == set(spec["requestBody"]["content"])
            assert served["requestBody"].get("required", False) == spec["requestBody"].get("required", False)
        assert set(spec["responses"]) <= set(served["responses"]), path
        assert "422" not in served["responses"]  # invalid parameters are the spec's 400 here
    assert "security" in ours[f"{PREFIX}/manifests/{{manifestId}}"]["get"]  # a record read: the token
    assert "security" not in ours[f"{PREFIX}/matches/byContent"]["post"]  # a search: public


def test_supported_algorithms_name_the_fingerprint(url):
    response = httpx.get(f"{url}{PREFIX}/services/supportedAlgorithms", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    jsonschema.validate(response.json(), spec_schema("c2pa.softBindingAlgList"))
    assert response.json() == {"watermarks": [], "fingerprints": [{"alg": ALG}]}


# ---------------------------------------------------------------- finding the source


def test_by_content_finds_the_signed_source_of_an_edited_copy(url, signed, edited_copy):
    matches = check_result(by_content(url, edited_copy, maxResults=5))
    assert matches[0]["manifestId"] == signed.active[0].manifest_id
    assert matches[0]["manifestId"].startswith("urn:c2pa:") and matches[0]["similarityScore"] >= 50
    assert [m["similarityScore"] for m in matches] == sorted((m["similarityScore"] for m in matches), reverse=True)


def test_by_content_names_an_image_without_credentials_by_a_stable_id(url, signed, small_photos):
    [match] = check_result(by_content(url, _jpeg(small_photos[2]), maxResults=1))  # the passive PNG, as a JPEG
    assert match["manifestId"] == f"activeindex:{signed.codec}:{signed.passive.id}"
    assert match["similarityScore"] >= 95


def test_by_content_with_no_copy_in_the_collection_has_no_match(url, small_photos):
    assert check_result(by_content(url, _jpeg(small_photos[4]))) == []  # a photo never registered


def test_by_binding_with_the_fingerprint_command_gives_the_same_answer(url, edited_copy, tmp_path):
    (tmp_path / "copy.jpg").write_bytes(edited_copy)
    command = [sys.executable, "-m", "activeindex", "fingerprint", "--json", "-q", str(tmp_path / "copy.jpg")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [entry] = json.loads(run.stdout)
    assert entry["alg"] == ALG and len(base64.b64decode(entry["value"])) == 1024
    expected = check_result(by_content(url, edited_copy, maxResults=5))
    for response in (httpx.get(f"{url}{PREFIX}/matches/byBinding", timeout=60,
                               params={"alg": entry["alg"], "value": entry["value"], "maxResults": 5}),
                     httpx.post(f"{url}{PREFIX}/matches/byBinding", params={"maxResults": 5}, timeout=60,
                                json={"alg": entry["alg"], "value": entry["value"]})):
        found = check_result(response)
        assert [m["manifestId"] for m in found] == [m["manifestId"] for m in expected]
        assert all(abs(a["similarityScore"] - b["similarityScore"]) <= 1 for a, b in zip(found, expected))


@pytest.mark.parametrize("which", [0, 1])
def test_a_signed_released_file_carries_its_fingerprint_as_a_soft_binding_that_resolves(url, signed, extractor,
                                                                                         which):
    """The manifest's ``c2pa.soft-binding`` assertion: this service's alg, the whole image, the released file's own
    fingerprint; a validator holding it (or a stripped copy's) resolves it here to that image's manifest."""
    record = signed.active[which]
    report = validation(record.activated_path, signed.pki.trust_anchors)
    assert report["validation_state"] == "Trusted"  # the assertion is hashed into the claim like any other
    [assertion] = [a for a in report["manifests"][record.manifest_id]["assertions"] if a["label"] == SOFT_BINDING]
    [block] = assertion["data"]["blocks"]
    assert assertion["data"]["alg"] == ALG and block["scope"] == {}  # an empty scope: the whole image
    # the fingerprint anyone computes from the released file (`activeindex fingerprint`), within float16 rounding
    assert float(decode_binding(block["value"]) @ extractor.encode(record.activated_path)) > 0.9999
    for response in (httpx.get(f"{url}{PREFIX}/matches/byBinding", params={"alg": ALG, "value": block["value"]},
                               timeout=60),
                     httpx.post(f"{url}{PREFIX}/matches/byBinding", json={"alg": ALG, "value": block["value"]},
                                timeout=60)):
        matches = check_result(response)
        assert matches[0]["manifestId"] == record.manifest_id and matches[0]["similarityScore"] >= 95


def test_max_results_bounds_the_matches(url, signed):
    copy = _jpeg(load_image(signed.active[1].activated_path))
    [match] = check_result(by_content(url, copy, maxResults=1))
    assert match["manifestId"] == signed.active[1].manifest_id
    assert check_result(by_content(url, copy, maxResults=100000))  # above the service's max_k: capped, not refused


# ---------------------------------------------------------------- manifests


def test_a_manifest_store_is_served_and_validates_with_c2pa(url, signed):
    record = signed.active[0]
    address = f"{url}{PREFIX}/manifests/{record.manifest_id}"
    check_error(httpx.get(address, timeout=30), 401)  # a record read: the token (the server has no --public-reads)
    response = httpx.get(address, headers=READ, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/c2pa"
    store = response.content
    assert store == manifest_store(record.activated_path)
    trusted = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False},
                                      "trust": {"trust_anchors": signed.pki.trust_anchors.read_text()}})
    with c2pa.Reader("application/c2pa", io.BytesIO(store), None, trusted) as reader:  # the store alone
        alone = json.loads(reader.json())
    assert alone["active_manifest"] == record.manifest_id
    results = alone["validation_results"]["activeManifest"]
    assert {r["code"] for r in results["success"]} >= {"claimSignature.validated", "claimSignature.insideValidity"}
    assert [r["code"] for r in results["failure"]] == ["assertion.dataHash.mismatch"]  # no asset to hash here
    released = Path(record.activated_path).read_bytes()
    with c2pa.Reader("image/jpeg", io.BytesIO(released), store, trusted) as reader:  # with the released file
        assert json.loads(reader.json())["validation_state"] == "Trusted"


def test_the_active_manifest_alone(url, signed):
    record = signed.active[1]
    response = httpx.get(f"{url}{PREFIX}/manifests/{record.manifest_id}", params={"returnActiveManifest": "true"},
                         headers=READ, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/c2pa"
    with c2pa.Reader("application/c2pa", io.BytesIO(response.content)) as reader:
        store = json.loads(reader.json())
    assert list(store["manifests"]) == [record.manifest_id] == [store["active_manifest"]]


def test_manifests_that_do_not_exist_are_404_and_bad_ids_400(url, signed):
    for manifest_id in (f"activeindex:{signed.codec}:{signed.passive.id}",  # registered without credentials
                        f"activeindex:{signed.codec}:999999", "activeindex:000000000000:1",
                        "urn:c2pa:00000000-0000-0000-0000-000000000000"):
        check_error(httpx.get(f"{url}{PREFIX}/manifests/{manifest_id}", headers=READ, timeout=30), 404)
    for manifest_id in ("urn%20c2pa", "x" * 300):
        check_error(httpx.get(f"{url}{PREFIX}/manifests/{manifest_id}", headers=READ, timeout=30), 400)
    record = signed.active[0]
    check_error(httpx.get(f"{url}{PREFIX}/manifests/{record.manifest_id}", params={"returnActiveManifest": "maybe"},
                          headers=READ, timeout=30), 400)


# ---------------------------------------------------------------- refusals


def test_unknown_algorithms_and_malformed_values_are_the_specs_400(url, edited_copy):
    value = encode_binding(np.full(512, 512 ** -0.5, np.float32))
    get = f"{url}{PREFIX}/matches/byBinding"
    assert "unknown alg" in check_error(httpx.get(get, params={"alg": "io.iscc.v0", "value": value}, timeout=30), 400)
    assert "unknown alg" in check_error(httpx.post(get, json={"alg": "com.example.x", "value": value}, timeout=30), 400)
    big_endian = base64.b64encode(np.full(512, 512 ** -0.5, ">f2").tobytes()).decode()
    for bad in ("not base64!", value[:-8], big_endian, base64.b64encode(np.zeros(512, "<f2").tobytes()).decode()):
        check_error(httpx.get(get, params={"alg": ALG, "value": bad}, timeout=30), 400)
    check_error(httpx.get(get, params={"alg": ALG}, timeout=30), 400)  # value missing
    check_error(httpx.get(get, params={"alg": ALG, "value": value, "maxResults": 0}, timeout=30), 400)
    check_error(httpx.post(get, content=b"{not json", timeout=30), 400)
    check_error(httpx.post(get, json={"alg": ALG}, timeout=30), 400)
    check_error(httpx.get(get, params={"alg": ALG, "value": "A" * 9000}, timeout=30), 414)
    assert "unknown alg" in check_error(by_content(url, edited_copy, alg="io.iscc.v0"), 400)
    check_result(by_content(url, edited_copy, alg=ALG, hintAlg="io.iscc.v0", hintValue="eA=="))  # hints: unused


def test_by_content_refuses_what_is_not_an_image(url, edited_copy):
    check_error(by_content(url, b"plain text", "text/plain"), 415)
    check_error(by_content(url, edited_copy, "audio/mpeg"), 415)
    check_error(by_content(url, b"\x89PNG but not really", "image/png"), 415)
    check_error(by_content(url, b"", "image/jpeg"), 415)
    check_result(by_content(url, edited_copy, "application/octet-stream"))


def test_schemathesis_finds_no_server_error_on_the_c2pa_routes(url, tmp_path):
    """Bounded and seeded, the C2PA operations only (read-only: this module's collection is left as it was);
    `positive_data_acceptance` is left out as in test_service.py: random bytes are rightly not an image."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--header", f"Authorization: Bearer {TOKEN}",
         "--include-path-regex", f"^{PREFIX}/", "--max-examples", "15", "--workers", "1", "--seed", "0",
         "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.split("SUMMARY")[-1]
    assert "5 selected" in result.stdout or "5 total" in result.stdout, result.stdout[-3000:]
    assert "passed" in result.stdout and "failed" not in summary


# ---------------------------------------------------------------- the pieces


def test_the_binding_value_round_trips_and_refuses_other_encodings(extractor, small_photos):
    descriptor = extractor.encode(small_photos[0])
    value = encode_binding(descriptor)
    assert len(value) == 1368 and base64.b64decode(value) == descriptor.astype("<f2").tobytes()
    decoded = decode_binding(value)
    assert decoded.dtype == np.float32 and decoded.shape == (512,)
    assert abs(np.linalg.norm(decoded) - 1) < 1e-6 and float(decoded @ descriptor) > 0.9999
    for bad, reason in ((base64.b64encode(descriptor.astype("<f4").tobytes()).decode(), "2048 bytes"),
                        (base64.b64encode(descriptor.astype(">f2").tobytes()).decode(), "norm"),
                        (value.replace("+", " ", 1) if "+" in value else value[:5] + " " + value[6:], "percent")):
        with pytest.raises(InvalidInputError, match=reason):
            decode_binding(bad)
    with pytest.raises(InvalidInputError):
        encode_binding(descriptor * 2)


def test_the_fingerprint_command_reports_bad_files_one_line_each(tmp_path, capsys, extractor, small_photos):
    good, bad = tmp_path / "good.jpg", tmp_path / "notes.txt"
    good.write_bytes(_jpeg(small_photos[3]))
    bad.write_text("not an image")
    assert cli.main(["fingerprint", str(good), str(bad), "-q"]) == 1
    out, err = capsys.readouterr()
    [line] = out.splitlines()
    value, name = line.split("  ")
    assert name == str(good) and float(decode_binding(value) @ extractor.encode(load_image(good))) > 0.9999
    assert err.splitlines() == [f"error: {bad}: not an image file PIL can identify", "1 fingerprinted, 1 failed"]


@pytest.mark.parametrize("threshold", [0.25, 0.4, 0.6, 0.0, -0.5])
def test_the_score_maps_the_operating_point_to_50(threshold):
    grid = np.linspace(-1, 1, 2001)
    scores = [similarity_score(float(s), threshold) for s in grid]
    assert scores == sorted(scores) and scores[0] == 0 and scores[-1] == 100
    assert similarity_score(threshold, threshold) == 50
    assert all((score >= 50) == (s >= threshold) for s, score in zip(grid, scores))
    if threshold > 0:
        assert similarity_score(0.0, threshold) == 0
    assert similarity_score(1.0000001, threshold) == 100


def test_the_draft_registry_entry_validates_against_the_registry_schema():
    entries = json.loads((ROOT / "docs" / "c2pa-algorithm-entry.json").read_text())
    schema = json.loads((SPECS / "c2pa-softbinding-algorithm-list.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(entries)
    [entry] = entries
    assert entry["alg"] == ALG and entry["type"] == "fingerprint" and entry["decodedMediaTypes"] == ["image"]
    metadata = entry["entryMetadata"]
    dt.datetime.fromisoformat(metadata["dateEntered"])  # formats the installed checker leaves unchecked
    assert urlparse(metadata["informationalUrl"]).scheme == "https"
    registered = json.loads((SPECS / "c2pa-softbinding-algorithm-list.json").read_text())
    assert ALG not in {e["alg"] for e in registered}
