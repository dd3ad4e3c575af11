"""The extractor: one preprocessing, a fast path and a differentiable path that agree on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from activeindex import Extractor, PreprocessConfig
from activeindex.errors import ImageDecodeError, InvalidInputError, UnknownNameError
from activeindex.extractor import preprocess, to_tensor
from activeindex.imageio import load_image


def test_preprocess_resizes_the_shorter_side_keeping_aspect():
    out = preprocess(torch.rand(1, 3, 400, 600))
    assert out.shape == (1, 3, 288, 432)
    out = preprocess(torch.rand(2, 3, 1000, 500), PreprocessConfig(short_side=100))
    assert out.shape == (2, 3, 200, 100)
    assert torch.equal(out, (out * 255).round() / 255)  # on the 8-bit grid


def test_preprocess_passes_gradients_through_the_rounding():
    x = torch.rand(1, 3, 300, 300, requires_grad=True)
    preprocess(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_fast_and_differentiable_paths_agree_on_real_photos(extractor, photo_paths):
    """Full-resolution photos of mixed sizes: the onnxruntime int8 path and the torch path (ste)."""
    fast = extractor.encode(photo_paths)
    with torch.no_grad():
        slow = np.concatenate([extractor.embed(to_tensor(load_image(p))).numpy() for p in photo_paths])
    cosines = (fast * slow).sum(1)
    assert fast.shape == (6, 512) and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert cosines.min() >= 0.998, cosines


def test_encode_one_image_gives_one_vector(extractor, photo_paths):
    one = extractor.encode(photo_paths[0])
    assert one.shape == (512,)
    np.testing.assert_allclose(one, extractor.encode([load_image(photo_paths[0])])[0], atol=1e-6)


def test_descriptors_separate_copies_from_other_photos(extractor, small_photos):
    x = extractor.encode_arrays(small_photos)
    flipped = extractor.encode_arrays([np.ascontiguousarray(small_photos[0][:, ::-1])])[0]
    others = x[1:] @ x[0]
    assert flipped @ x[0] > 0.5 > others.max()


def test_gradient_reaches_the_full_resolution_image(extractor, small_photos):
    image = to_tensor(small_photos[0]).requires_grad_(True)
    extractor.embed(image)[0, 0].backward()
    assert image.grad.shape == image.shape and image.grad.abs().sum() > 0


def test_model_id_names_the_weights(extractor):
    assert extractor.model_id["name"] == "sscd" and len(extractor.model_id["sha256"]) == 64


def scripted_model(path, dim: int) -> str:
    """A small TorchScript descriptor network saved to ``path`` (stands in for Meta's SSCD files)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, dim))
    torch.jit.script(net).save(str(path))
    return str(path)


def test_torchscript_model_by_path(tmp_path, small_photos):
    model = Extractor(scripted_model(tmp_path / "net.pt", 512), device="cpu")
    assert model.dim == 512 and model.model_id["name"] == "torchscript:net.pt"
    fast = model.encode_arrays(small_photos[:2])
    with torch.no_grad():
        slow = model.embed(to_tensor(small_photos[0])).numpy()
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-5)


def test_bad_models_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(InvalidInputError, match="not a loadable TorchScript model") as info:
        Extractor(tmp_path / "junk.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownNameError, match="unknown model 'resnet'"):
        Extractor("resnet")


def test_cuda_request_without_cuda_is_clear():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        Extractor(device="cuda")


def test_gradient_graphs_approximate_the_exact_one(extractor, small_photos):
    """relu and bfloat16 only approximate the int8 function: fine for gradients, never for descriptors."""
    with torch.no_grad():
        image = to_tensor(small_photos[0])
        exact = extractor.embed(image)
        relu = extractor.embed(image, "relu")
        relu_bf16 = extractor.embed(image, "relu", torch.bfloat16)
    assert relu_bf16.dtype == torch.float32
    assert 0.95 < float((relu * exact).sum()) < 0.9985
    assert 0.95 < float((relu_bf16 * exact).sum()) < 0.9985 and not torch.equal(relu_bf16, relu)
    with pytest.raises(InvalidInputError, match="unknown torch mode 'fp16'"):
        extractor.differentiable("fp16")


def test_reading_ahead_gives_the_same_descriptors(extractor, photo_paths, tmp_path):
    """Decoding the next batch in threads changes nothing: identical vectors, and a corrupt file among the
    photos is still a one-line error that names it."""
    in_line = extractor.encode(photo_paths, batch_size=2, readers=0)
    ahead = extractor.encode(photo_paths, batch_size=2, readers=2)
    np.testing.assert_array_equal(ahead, in_line)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg") as info:
        extractor.encode([*photo_paths[:3], broken, *photo_paths[3:]], batch_size=2)
    assert "\n" not in str(info.value)
