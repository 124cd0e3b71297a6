"""Serving processes load an IsolationForest from its flat arrays, without sklearn.

Importing scikit-learn and SciPy costs ~95 MB of resident memory in the gateway and
every API worker; the compiled forest needs only numpy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from model.artifact import COMPILED_FILE, MODEL_FILE, resolve
from model.scorer import _load_pickled, load_scorer
from tests.helpers import ROOT


def test_fresh_artifact_has_a_compiled_forest(models_dir):
    assert (resolve(models_dir) / COMPILED_FILE).is_file()
    assert (resolve(models_dir) / MODEL_FILE).is_file()  # the pickle stays the reference


def test_light_and_pickled_scorers_agree_exactly(models_dir):
    light = load_scorer(models_dir)
    version_dir = resolve(models_dir)
    from model.artifact import read_metadata

    pickled = _load_pickled(version_dir, read_metadata(version_dir))
    rng = np.random.default_rng(0)
    x = rng.normal([55, 45, 70], [20, 10, 15], size=(5000, 3))
    x[:50] *= 5  # far outside training
    np.testing.assert_array_equal(light.score(x), pickled.score(x))
    assert light.version == pickled.version and light.threshold == pickled.threshold


def test_serving_imports_no_sklearn(models_dir):
    code = (
        "import sys; import gateway.app, api.app; from model.scorer import load_scorer; "
        f"s = load_scorer({str(models_dir)!r}); s.score(s._mean[None, :]); "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'joblib'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
