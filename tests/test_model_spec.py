"""``--model module:function`` resolves from the current directory, like ``python -m``."""

from __future__ import annotations

import sys
import textwrap

import pytest

from fedsock.errors import ConfigError
from fedsock.kerasutil import import_function
from tests.conftest import start_chief

MODEL_PY = textwrap.dedent("""
    import keras

    def build():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def helper_value():
        return 42
""")


@pytest.fixture
def clean_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.startswith("fs_spec_")]:
        del sys.modules[name]


def test_module_in_the_current_directory_is_found(tmp_path, monkeypatch, clean_path):
    (tmp_path / "fs_spec_models.py").write_text("def build():\n    return 'built'\n")
    (tmp_path / "fs_spec_pkg").mkdir()
    (tmp_path / "fs_spec_pkg" / "__init__.py").write_text("")
    (tmp_path / "fs_spec_pkg" / "nets.py").write_text("from fs_spec_models import build as inner\n"
                                                     "def make():\n    return inner() + '!'\n")
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    assert import_function("fs_spec_models:build")() == "built"
    assert import_function("fs_spec_pkg.nets:make")() == "built!"  # a package, importing its neighbour


def test_missing_module_names_the_directory_and_the_fix(tmp_path, monkeypatch, clean_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no module 'fs_spec_nowhere'.*current directory.*PYTHONPATH"):
        import_function("fs_spec_nowhere:build")


def test_broken_import_inside_the_module_is_not_called_missing(tmp_path, monkeypatch, clean_path):
    (tmp_path / "fs_spec_broken.py").write_text("import fs_spec_absent_dependency\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"importing fs_spec_broken failed.*fs_spec_absent_dependency") as e:
        import_function("fs_spec_broken:build")
    assert "current directory" not in str(e.value)


def test_missing_function_lists_what_the_module_has(tmp_path, monkeypatch, clean_path):
    (tmp_path / "fs_spec_few.py").write_text("def build_a():\n    pass\n\ndef build_b():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no function 'biuld'.*build_a, build_b"):
        import_function("fs_spec_few:biuld")
    with pytest.raises(ConfigError, match=r"module:function"):
        import_function("fs_spec_few")


@pytest.mark.integration
def test_chief_py_loads_a_model_module_from_its_working_directory(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODEL_PY)  # start_chief runs chief.py with cwd=tmp_path
    chief = start_chief(tmp_path, "--model", "mymodels:build", "--rounds", "1", "--min-workers", "1")
    chief.proc.terminate()
    chief.wait(60)
    assert "No module named" not in chief.output()
    assert (chief.state_dir / "token").exists()
