"""Model loading (timm name, checkpoint, custom import path), its failures, and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ood_ray.config import ConfigError, ModelConfig, load_config
from ood_ray.embed.models import build_model, inspect_models
from ood_ray.embed.preprocess import normalize_batch, prepare_model_input, preprocessing_key

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
REAL = Path(__file__).resolve().parents[1] / "data" / "real"


@pytest.fixture(autouse=True)
def custom_models_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(MODELS_DIR))


def test_timm_models_inspect_to_their_shapes():
    infos = inspect_models([ModelConfig(name="test_resnet"), ModelConfig(name="test_vit", num_classes=0)])
    assert [(i.alias, i.embedding_dim, i.num_classes) for i in infos] == [("test_resnet", 96, 1000), ("test_vit", 64, 0)]
    assert infos[0].data_config["input_size"] == (3, 160, 160)


def test_random_init_is_identical_across_builds():
    a, b = build_model(ModelConfig(name="test_resnet")), build_model(ModelConfig(name="test_resnet"))
    for pa_, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa_, pb)


def test_checkpoint_round_trip_with_wrapper_and_module_prefix(tmp_path):
    model = build_model(ModelConfig(name="test_resnet", num_classes=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    wrapped = {"best_prec1": 90.0, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    loaded = build_model(ModelConfig(name="test_resnet", num_classes=4, checkpoint=str(tmp_path / "ckpt.pth")))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    model = build_model(ModelConfig(name="test_vit", num_classes=3))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = build_model(ModelConfig(name="test_vit", num_classes=3, checkpoint=str(tmp_path / "w.safetensors")))
    x = torch.randn(1, 3, 160, 160)
    torch.testing.assert_close(loaded(x), model(x))


def test_custom_import_path_model():
    info = inspect_models([ModelConfig(name="custom_models:tiny_classifier")])[0]
    assert info.alias == "tiny_classifier" and info.num_classes == 3 and info.embedding_dim == 8
    assert info.data_config["input_size"] == (3, 24, 24) and info.data_config["std"] == (0.25, 0.25, 0.25)
    assert info.import_root == str(MODELS_DIR)


@pytest.mark.parametrize(
    "spec,message",
    [
        (ModelConfig(name="resnet_that_does_not_exist"), "not a timm model name"),
        (ModelConfig(name="test_resnet", checkpoint="/nowhere/weights.pth"), "cannot read"),
        (ModelConfig(name="no_such_module_xyz:make"), "cannot import module"),
        (ModelConfig(name="custom_models:missing_function"), "has no function"),
        (ModelConfig(name="custom_models:not_a_module"), "not a torch.nn.Module"),
    ],
)
def test_bad_models_fail_with_a_clear_message(spec, message):
    with pytest.raises(ConfigError, match=message):
        inspect_models([spec])


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.save(build_model(ModelConfig(name="test_vit")).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="does not fit model 'test_resnet'.*Missing key"):
        inspect_models([ModelConfig(name="test_resnet", checkpoint=str(tmp_path / "vit.pth"))])


def test_a_pickled_object_is_not_loaded(tmp_path):
    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": object()}))
    with pytest.raises(ConfigError, match="weights_only"):
        inspect_models([ModelConfig(name="test_resnet", checkpoint=str(tmp_path / "evil.pth"))])


def test_unreachable_pretrained_weights_fail_before_any_work(monkeypatch):
    monkeypatch.setattr("ood_ray.embed.models.hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(ConfigError, match="not in the local cache and the model hub is not reachable"):
        inspect_models([ModelConfig(name="test_resnet", pretrained=True)])


def test_model_config_errors_name_key_and_value():
    with pytest.raises(ConfigError, match=r"models\[0\].crop_pct=1.5"):
        load_config(None, ["models=[{name: test_resnet, crop_pct: 1.5}]"], source="s", out="o")
    with pytest.raises(ConfigError, match=r"models\[1\].alias"):
        load_config(None, [], ["test_resnet", "test_resnet"], source="s", out="o")
    config = load_config(None, ["models=[{name: test_resnet, input_size: [64, 64], mean: [0.1, 0.2, 0.3]}]"], source="s", out="o")
    info = inspect_models(config.models)[0]
    assert info.data_config["input_size"] == (3, 64, 64) and info.data_config["mean"] == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_preprocessing_equals_timms_eval_transform(name):
    import timm
    from timm.data import create_transform, resolve_data_config

    from ood_ray.io.decode import decode_image

    info = inspect_models([ModelConfig(name=name)])[0]
    path = REAL / "imagenet_00_243.jpg"
    pixels = decode_image(path.read_bytes(), 10**8).pixels
    _, h, w = info.data_config["input_size"]
    ours = np.frombuffer(prepare_model_input(pixels, info.data_config), np.uint8).reshape(1, h, w, 3)
    x = normalize_batch(torch.from_numpy(ours.copy()), info.data_config["mean"], info.data_config["std"])
    reference = create_transform(**resolve_data_config({}, model=timm.create_model(name)))(Image.open(path).convert("RGB"))
    torch.testing.assert_close(x[0], reference, rtol=0, atol=1e-6)
    assert preprocessing_key(info.data_config).startswith("px_160x160_")


def test_grey_and_sixteen_bit_images_become_rgb():
    data_config = {"input_size": (3, 8, 8), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    grey = np.full((8, 8, 1), 7, np.uint8)
    out = np.frombuffer(prepare_model_input(grey, data_config), np.uint8).reshape(8, 8, 3)
    assert (out == 7).all()
    sixteen = np.full((8, 8, 1), 65535, np.uint16)
    assert (np.frombuffer(prepare_model_input(sixteen, data_config), np.uint8) == 255).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    assert (np.frombuffer(prepare_model_input(rgba, data_config), np.uint8) == 0).all()
