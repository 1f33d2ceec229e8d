"""Config: defaults, YAML + --set precedence, and errors that name the key and the value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ood_ray.config import ConfigError, load_config, parse_override


def test_defaults_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: a\nout: b\nlint:\n  method: iqr\n  threshold: 2.0\ndedup:\n  near_distance: 3\n")
    config = load_config(str(path), ["dedup.near_distance=5", "io.extensions=.png,.jpg"], out="c")
    assert config.source == "a" and config.out == "c"  # explicit beats YAML
    assert config.lint.method == "iqr" and config.lint.threshold == 2.0
    assert config.dedup.near_distance == 5 and config.dedup.effective_bands == 7
    assert config.io.extensions == [".png", ".jpg"]
    assert config.io.max_pixels == 178_956_970


def test_lint_rules_resolve_per_metric():
    config = load_config(None, [
        "lint.method=zscore", "lint.overrides.entropy.method=iqr",
        "lint.overrides.mean.threshold=2.5",
    ], source="s", out="o")
    assert config.lint.rule_for("std") == ("zscore", 3.0)
    assert config.lint.rule_for("entropy") == ("iqr", 1.5)
    assert config.lint.rule_for("mean") == ("zscore", 2.5)


@pytest.mark.parametrize(
    "override,key,value",
    [
        ("lint.methd=iqr", "lint.methd", None),
        ("lint.method=median", "lint.method", "median"),
        ("dedup.near_distance=-1", "dedup.near_distance", "-1"),
        ("dedup.near_distance=four", "dedup.near_distance", "four"),
        ("io.max_pixels=0", "io.max_pixels", "0"),
        ("ray.task_num_cpus=0", "ray.task_num_cpus", "0"),
        ("lint.metrics=mean,colourfulness", "lint.metrics", "colourfulness"),
        ("dedup.bands=3", "dedup.bands", "3"),
        ("io.layout=deep", "io.layout", "deep"),
        ("cluster.method=dbscan", "cluster.method", "dbscan"),
        ("cluster.k_max=1", "cluster.k_max", "1"),
        ("project.methods=[pca,trimap]", "project.methods", "trimap"),
        ("drift.correction=holm", "drift.correction", "holm"),
        ("drift.alpha=1.5", "drift.alpha", "1.5"),
        ("autoencoder.image_size=30", "autoencoder.image_size", "30"),
        ("autoencoder.epochs=0", "autoencoder.epochs", "0"),
        ("lint.per_class=maybe", "lint.per_class", "maybe"),
    ],
)
def test_bad_values_name_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], source="s", out="o")
    assert key in str(info.value)
    if value is not None:
        assert value in str(info.value)


def test_missing_source_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="source"):
        load_config(None, [], out="o")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lint.method")


def test_cli_rejects_bad_config_before_importing_ray():
    """Exit code 2 with the key and value, and Ray never imported (so it fails fast)."""
    code = (
        "import sys; from ood_ray.cli import main; "
        "rc = main(['audit', 'nowhere', '--out', 'x', '--set', 'lint.method=nope']); "
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'RAY_NOT_IMPORTED'); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "lint.method='nope'" in result.stderr
    assert "RAY_NOT_IMPORTED" in result.stdout


def test_cli_rejects_missing_source_folder_before_starting_ray(tmp_path):
    code = (
        "import sys; from ood_ray.cli import main; "
        f"rc = main(['audit', {str(tmp_path / 'absent')!r}, '--out', {str(tmp_path / 'out')!r}]); "
        "import ray; print('RAY_STARTED' if ray.is_initialized() else 'RAY_NOT_STARTED'); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "source=" in result.stderr and "absent" in result.stderr
    assert "RAY_NOT_STARTED" in result.stdout
