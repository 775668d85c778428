"""Every registered model, generated from the registry: shapes, gradients, counts, weights."""

from __future__ import annotations

import os
import urllib.request

import pytest
import torch

from mnist_tracker.config import resolve_config
from mnist_tracker.models import ModelError, count_params, create_model, get_spec, list_specs
from mnist_tracker.models.transfer import weights_cache_path

pytestmark = pytest.mark.fast

SPECS = list_specs()
NAMES = [s.name for s in SPECS]


def test_registry_holds_the_five_lab_models():
    assert NAMES == ["cnn", "deep_cnn", "vgg16", "alexnet", "vit"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_counts(name):
    spec = get_spec(name)
    config = resolve_config(name, pretrained=False, freeze=spec.has_pretrained)
    torch.manual_seed(0)
    model = create_model(config)
    assert count_params(model) == (spec.n_params, spec.n_trainable)
    x = torch.rand(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} got no gradient"
        else:
            assert p.grad is None, f"frozen {pname} got a gradient"
    if spec.has_pretrained:
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and all(n.startswith("net.features.") for n in frozen)


@pytest.mark.parametrize("name", ["cnn", "deep_cnn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_relu_after_max_pool_is_the_labs_network_bit_for_bit(name, precision, layout):
    """The conv nets run MaxPool -> ReLU where the lab has ReLU -> MaxPool (models/cnn.py,
    ``_relu_pool_drop``): a training step of each order, from the same weights and seed,
    gives the same logits, loss, gradients and batch-norm statistics, bit for bit. What is
    pooled comes out of batch norm centred on zero, so windows without a positive value
    (where the two orders pick different elements, and neither passes a gradient) occur."""
    import copy

    from mnist_tracker.models.cnn import in_lab_order
    from mnist_tracker.training.runtime import autocast

    torch.manual_seed(0)
    ours = create_model(resolve_config(name)).train().to(memory_format=layout)
    lab = in_lab_order(copy.deepcopy(ours))
    assert [type(m) for m in lab.modules()] != [type(m) for m in ours.modules()]
    assert lab.state_dict().keys() == ours.state_dict().keys()
    x, y = torch.rand(16, 1, 28, 28).to(memory_format=layout), torch.arange(16) % 10
    results = []
    for model in (ours, lab):
        torch.manual_seed(1)  # the same dropout masks: drawn in the same order and sizes
        with autocast(torch.device("cpu"), precision):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        results.append((logits, loss, grads, model.state_dict()))
    (l1, s1, g1, d1), (l2, s2, g2, d2) = results
    assert torch.equal(l1, l2) and torch.equal(s1, s2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert all(torch.equal(d1[k], d2[k]) for k in d1)  # BN's running statistics too


@pytest.mark.parametrize("name", NAMES)
def test_batch_sizes_and_eval_mode(name):
    spec = get_spec(name)
    size = spec.min_image_size if spec.resizable else None
    config = resolve_config(name, pretrained=False, image_size=size)
    model = create_model(config).eval()
    with torch.inference_mode():
        for n in (1, 7):
            assert model(torch.rand(n, 1, 28, 28)).shape == (n, 10)


def _in_hub_cache(name: str, state: dict[str, torch.Tensor]) -> str:
    """``state`` saved where torch hub keeps ``name``'s ImageNet weights (this test's own
    $TORCH_HOME, from conftest); its path."""
    path = weights_cache_path(name)
    assert path.startswith(os.environ["TORCH_HOME"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_pretrained_weights_load_from_the_hub_cache(name, tmp_path):
    """A state dict placed in the torch hub cache ($TORCH_HOME from conftest) is loaded."""
    from torchvision import models as tvm

    torch.manual_seed(123)
    reference = getattr(tvm, name)(weights=None)
    _in_hub_cache(name, reference.state_dict())

    model = create_model(resolve_config(name, image_size=get_spec(name).min_image_size))
    net = model.net
    loaded = net.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("classifier.6."):  # the new 10-class head
            assert torch.equal(loaded[key], value), key
    assert net.classifier[-1].out_features == 10
    assert not any(p.requires_grad for p in net.features.parameters())
    assert all(p.requires_grad for p in net.classifier.parameters())


def test_half_precision_weights_in_the_cache_give_fp32_parameters():
    """The weights become the network's own tensors (no random init first), yet a file saved
    in fp16 gives fp32 parameters with the file's values, as copying into fp32 ones did."""
    from torchvision import models as tvm

    state = {k: v.half() for k, v in tvm.alexnet(weights=None).state_dict().items()}
    _in_hub_cache("alexnet", state)
    net = create_model(resolve_config("alexnet", image_size=64)).net
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert torch.equal(net.features[0].weight, state["features.0.weight"].float())


def test_a_cached_file_of_other_weights_is_refused_with_its_path():
    """A file in the hub cache that is not the network's weights (here AlexNet's layers cut
    short) is a ModelError naming the file and both ways out, not a half-loaded network."""
    from torchvision import models as tvm

    state = tvm.alexnet(weights=None).state_dict()
    del state["classifier.6.bias"]
    path = _in_hub_cache("alexnet", state)
    with pytest.raises(ModelError) as err:
        create_model(resolve_config("alexnet", image_size=64))
    message = str(err.value)
    assert path in message and "classifier.6.bias" in message, message
    assert "delete it" in message and "--no-pretrained" in message, message


def test_pretrained_offline_error_names_the_file(monkeypatch):
    # A proxy on a closed loopback port: the download fails at once, as it does offline.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # urlopen builds the process's one opener at its first call, with the proxies of that
    # moment, and keeps it: unset afterwards, or every later download in this worker goes to
    # the dead proxy (test_data.py's mirror test failed so under `make test-fast`).
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(ModelError) as err:
        create_model(resolve_config("alexnet", image_size=64))
    message = str(err.value)
    assert weights_cache_path("alexnet") in message
    assert "--no-pretrained" in message
    assert not os.path.exists(weights_cache_path("alexnet"))


def test_native_models_have_no_pretrained_option():
    from mnist_tracker.config import ConfigError

    with pytest.raises(ConfigError, match="no pretrained weights"):
        resolve_config("cnn", pretrained=True)


def test_preprocessing_inside_the_model_matches_the_recipe():
    """Transfer models see 3 ImageNet-normalised channels at image_size; cnn sees MNIST norm."""
    cnn = create_model(resolve_config("cnn"))
    x = torch.full((1, 1, 28, 28), 0.1307)
    assert torch.allclose(cnn.preprocess(x), torch.zeros(1, 1, 28, 28), atol=1e-6)
    alex = create_model(resolve_config("alexnet", pretrained=False, image_size=96))
    out = alex.preprocess(torch.full((2, 1, 28, 28), 0.485))
    assert out.shape == (2, 3, 96, 96)
    assert torch.allclose(out[:, 0], torch.zeros(2, 96, 96), atol=1e-5)
