"""``ood-ray finetune`` on the session's Ray: OE / MixOE fine-tunes of a tiny custom classifier on
generated pictures, outliers of another kind; hostile files skipped and counted; the output loads
in an audit; a fine-tune killed after its first epoch and resumed ends with the weights of an
uninterrupted one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ood_ray.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
from faults import kill_driver, start, wait_for  # noqa: E402

#: each test's fixtures run several fine-tunes (Ray Train starts) and one kills a process
pytestmark = pytest.mark.timeout(900)

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MODEL = "models=[{name: 'custom_models:tiny_classifier'}]"
QUICK = ["finetune.epochs=2", "finetune.batch_size=16", "finetune.learning_rate=0.1", "finetune.validation_fraction=0.2"]


COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "held": (200, 200, 40)}


def class_picture(label: str, rng: np.random.Generator, size: int) -> Image.Image:
    """ID: a smooth picture of the class's colour (a gradient, a few darker blobs, mild noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.asarray(COLOURS[label], dtype=np.float64) * rng.uniform(0.7, 1.1)
    shade = 1 + 0.3 * np.sin(2 * np.pi * (rng.uniform(0.2, 1) * xx + rng.uniform(0.2, 1) * yy) + rng.uniform(0, 6))
    picture = base[None, None, :] * shade[:, :, None] + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), "RGB")


def noise_picture(rng: np.random.Generator, size: int) -> Image.Image:
    """Outliers: per-pixel noise of a random colour scale (nothing like the shapes)."""
    scale = rng.uniform(0.3, 1.0, size=3)
    return Image.fromarray((rng.random((size, size, 3)) * 255 * scale).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory):
    sys.path.insert(0, str(MODELS_DIR))
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    for label in COLOURS:
        folder = root / "id" / "train" / label
        folder.mkdir(parents=True)
        for i in range(30 if label != "held" else 8):
            class_picture(label, rng, 24).save(folder / f"{i:03d}.png")
    (root / "id" / "train" / "red" / "truncated.png").write_bytes((root / "id" / "train" / "red" / "000.png").read_bytes()[:60])
    (root / "id" / "train" / "green" / "not_an_image.png").write_text("hello")
    for kind, count, seed in (("outliers", 60, 1), ("test_ood", 20, 2)):
        folder = root / kind
        folder.mkdir()
        r = np.random.default_rng(seed)
        for i in range(count):
            noise_picture(r, 24).save(folder / f"{i:03d}.png")
    test = root / "test_id"
    test.mkdir()
    for i in range(20):
        class_picture(("red", "green", "blue")[i % 3], rng, 24).save(test / f"{i:03d}.png")
    return root


def msp(weights: Path, entry: dict, folder: Path) -> np.ndarray:
    """Max softmax probability of the fine-tuned model on every image of ``folder``."""
    from safetensors.torch import load_file

    from ood_ray.config import ModelConfig
    from ood_ray.embed.models import build_model

    spec = ModelConfig(name=entry["name"], num_classes=entry["num_classes"])
    model = build_model(spec)
    model.load_state_dict(load_file(str(weights)))
    x = torch.tensor(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]))
    x = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).max(dim=1).values.numpy()


def finetune(data: Path, out: Path, *sets: str, outliers: bool = True, model: str = MODEL):
    from ood_ray.finetune.run import run_finetune

    config = load_config(None, [model, *QUICK, *sets], source=str(data / "id"), out=str(out))
    return run_finetune(config, str(data / "outliers") if outliers else None, holdout_classes=["held"])


@pytest.fixture(scope="module")
def without_outliers(ray_session, finetune_data, tmp_path_factory):
    """The same fine-tune without outliers (``method: ce``, plain cross-entropy): the baseline."""
    out = tmp_path_factory.mktemp("baseline")
    record = finetune(finetune_data, out, "finetune.method=ce", "finetune.epochs=10", outliers=False)
    assert record["method"] == "ce" and record["data"]["outlier_counts"] == {}
    return msp(out / "model.safetensors", record["model"], finetune_data / "test_ood")


@pytest.fixture(scope="module")
def fine_tuned(ray_session, finetune_data, tmp_path_factory):
    """``{method: (output folder, finetune.json)}`` of an OE and a MixOE fine-tune."""
    runs = {}
    for method in ("oe", "mixoe"):
        out = tmp_path_factory.mktemp(method)
        runs[method] = (out, finetune(finetune_data, out, f"finetune.method={method}", "finetune.epochs=10"))
    return runs


@pytest.mark.parametrize("method", ["oe", "mixoe"])
def test_a_fine_tune_lowers_the_confidence_on_outliers(finetune_data, fine_tuned, method, without_outliers):
    out, record = fine_tuned[method]
    assert record["class_names"] == ["blue", "green", "red"] and record["held_out"] == ["held"]
    counts = record["data"]["counts"]
    assert counts["ok"] == 90 and sum(v for k, v in counts.items() if k != "ok") == 2  # the two hostile files
    assert record["data"]["train"] + record["data"]["validation"] == 90 and record["data"]["outlier_counts"] == {"ok": 60}
    assert [e["epoch"] for e in record["epochs"]] == list(range(1, 11))
    assert record["epochs"][-1]["validation_accuracy"] >= 0.8
    entry = record["model"]
    assert entry["num_classes"] == 3 and entry["class_names"] == record["class_names"]
    ood, in_distribution = msp(out / "model.safetensors", entry, finetune_data / "test_ood"), msp(
        out / "model.safetensors", entry, finetune_data / "test_id")
    # unseen noise (another seed than the training outliers) is far less confident than ID pictures
    assert ood.mean() < in_distribution.mean() - 0.25, (ood.mean(), in_distribution.mean())
    assert ood.mean() < without_outliers.mean() - 0.1, (ood.mean(), without_outliers.mean())  # the outlier term did it
    saved = json.loads((out / "finetune.json").read_text())
    assert saved["base"]["name"] == "custom_models:tiny_classifier" and saved["seconds"]["per_epoch"] > 0


def test_the_output_loads_in_an_audit(ray_session, finetune_data, fine_tuned, tmp_path):
    from ood_ray.pipeline import run_audit
    from ood_ray.query import run_query

    out = fine_tuned["oe"][0]
    run = run_audit(load_config(str(out / "model.yaml"), ["io.rows_per_block=20"], source=str(finetune_data / "id"),
                                out=str(tmp_path / "audit")))
    assert run["rows_out"] == run["objects_in"] == len(list((finetune_data / "id").rglob("*.png"))) == 100
    classes = run_query(str(tmp_path / "audit"), "SELECT DISTINCT len(probabilities) AS n FROM predictions").column(0).to_pylist()
    assert classes == [3]
    # the class names written in model.yaml give confident learning its mapping ("held" is no class)
    assert run["label_issues"]["models"]["tiny_classifier_oe"]["how"] == "models[].class_names"


def test_a_killed_fine_tune_resumes_to_the_same_weights(ray_session, finetune_data, tmp_path):
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    finetune(finetune_data, straight, "finetune.method=mixoe")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "ood_ray.cli", "finetune", str(finetune_data / "id"), "--outliers",
               str(finetune_data / "outliers"), "--out", str(out), "--holdout-classes", "held", "--method", "mixoe",
               "--set", MODEL, "--set", "ray.num_cpus=2", "--set", "ray.object_store_memory_mb=200",
               *sum((["--set", s] for s in QUICK), [])]
    process = start(command, tmp_path / "first.log", OOD_RAY_PAUSE_AT="finetune:epoch-1")
    assert wait_for(lambda: "pausing at finetune:epoch-1" in (tmp_path / "first.log").read_text(errors="replace"), 240,
                    process=process), (tmp_path / "first.log").read_text()[-3000:]
    assert kill_driver(process) == []
    assert (out / "checkpoints" / "epoch-0001.pt").exists() and not (out / "model.safetensors").exists()
    resumed = start([*command, "--resume"], tmp_path / "second.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    record = json.loads((out / "finetune.json").read_text())
    assert record["resumed_from"].endswith("epoch-0001.pt") and [e["epoch"] for e in record["epochs"]] == [1, 2]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # other settings are refused, naming what differs
    refused = start([*command, "--resume", "--set", "finetune.learning_rate=0.5"], tmp_path / "third.log")
    assert refused.wait(timeout=120) == 2
    assert "started with other settings (finetune)" in (tmp_path / "third.log").read_text()


def test_a_head_only_fine_tune_trains_the_last_layer_alone(ray_session, finetune_data, tmp_path):
    """``layers: head``: every tensor of the body -- batch-norm statistics and counters included -- is
    the base model's, the new 3-class head is trained."""
    from safetensors.torch import load_file

    from ood_ray.finetune.train import build_classifier

    model = "models=[{name: test_resnet}]"
    record = finetune(finetune_data, tmp_path, "finetune.method=ce", "finetune.layers=head", "finetune.epochs=1",
                      outliers=False, model=model)
    tuned = load_file(str(tmp_path / "model.safetensors"))
    spec = load_config(None, [model], source="x", out="y").models[0]
    base = build_classifier({"spec": spec, "import_root": None, "num_classes": 3, "seed": 0}).state_dict()
    assert tuned.keys() == base.keys() and {"fc.weight", "fc.bias"} <= set(base)
    changed = {key for key in base if not torch.equal(base[key], tuned[key])}
    assert changed == {"fc.weight", "fc.bias"}, changed
    assert record["settings"]["layers"] == "head" and record["model"]["num_classes"] == 3


def test_bad_settings_fail_at_once_with_the_key():
    with pytest.raises(ConfigError, match="finetune.method='sgd'"):
        load_config(None, ["finetune.method=sgd"], source="x", out="y")
    with pytest.raises(ConfigError, match="finetune.validation_fraction"):
        load_config(None, ["finetune.validation_fraction=1.5"], source="x", out="y")
    with pytest.raises(ConfigError, match="finetune.layers='body'"):
        load_config(None, ["finetune.layers=body"], source="x", out="y")
    from ood_ray.finetune.run import run_finetune

    # outliers where the method takes none, none where it needs them: refused before anything starts
    with pytest.raises(ConfigError, match="--outliers='o'.*trains without outliers"):
        run_finetune(load_config(None, [MODEL, "finetune.method=ce"], source="x", out="y"), "o")
    with pytest.raises(ConfigError, match="--outliers: finetune.method='oe' needs"):
        run_finetune(load_config(None, [MODEL, "finetune.method=oe"], source="x", out="y"), None)


def test_a_fine_tune_reads_and_writes_s3_and_resumes_from_its_s3_checkpoints(ray_session, s3_server, finetune_data,
                                                                             fine_tuned, tmp_path):
    """Images and outliers read from S3, a checkpoint per epoch and the outputs written to S3; a
    ``--resume`` finds the newest checkpoint on S3 and ends with the same weights; the model written
    to S3 loads in an audit as it is."""
    from safetensors.torch import load

    from ood_ray.finetune.run import run_finetune
    from ood_ray.pipeline import run_audit
    from ood_ray.query import run_query

    client, bucket = s3_server["client"], "oodray-finetune"
    client.create_bucket(Bucket=bucket)
    for path in sorted(finetune_data.rglob("*.png")):
        client.put_object(Bucket=bucket, Key=f"data/{path.relative_to(finetune_data).as_posix()}", Body=path.read_bytes())
    out = f"s3://{bucket}/ft"
    config = load_config(None, [MODEL, *QUICK, "finetune.method=oe"], source=f"s3://{bucket}/data/id", out=out)
    record = run_finetune(config, f"s3://{bucket}/data/outliers", holdout_classes=["held"])
    # every file the local run counts, the two hostile ones included, was listed and decoded from S3
    assert record["data"]["counts"] == fine_tuned["oe"][1]["data"]["counts"] and record["data"]["counts"]["ok"] == 90
    assert record["data"]["outlier_counts"] == {"ok": 60} and record["held_out"] == ["held"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="ft/")["Contents"]}
    assert {"ft/checkpoints/epoch-0001.pt", "ft/checkpoints/epoch-0002.pt", "ft/model.safetensors", "ft/model.yaml",
            "ft/finetune.json"} <= keys, keys
    first = load(client.get_object(Bucket=bucket, Key="ft/model.safetensors")["Body"].read())

    client.delete_object(Bucket=bucket, Key="ft/checkpoints/epoch-0002.pt")
    resumed = run_finetune(config, f"s3://{bucket}/data/outliers", holdout_classes=["held"], resume=True)
    assert resumed["resumed_from"] == f"{out}/checkpoints/epoch-0001.pt"
    again = load(client.get_object(Bucket=bucket, Key="ft/model.safetensors")["Body"].read())
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)

    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_bytes(client.get_object(Bucket=bucket, Key="ft/model.yaml")["Body"].read())
    assert f"checkpoint: {out}/model.safetensors" in model_yaml.read_text()
    run = run_audit(load_config(str(model_yaml), ["io.rows_per_block=20"], source=str(finetune_data / "test_id"),
                                out=str(tmp_path / "audit")))
    assert run["rows_out"] == run["objects_in"] == 20
    sizes = run_query(str(tmp_path / "audit"), "SELECT DISTINCT len(probabilities) AS n FROM predictions").column(0).to_pylist()
    assert sizes == [3]
