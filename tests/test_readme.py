"""What the README promises about installing kopt (issue #13, item 19)."""

from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_install_from_a_checkout_is_documented():
    assert 'pip install -e ".[flax,orbax]"' in README


def test_no_pypi_release_is_claimed_and_the_unrelated_package_is_named():
    assert "not on PyPI" in README
    assert "`pip install kopt` does not install this library" in README
    assert "pip install kopt-jax" not in README
    assert 'pip install "kopt-jax' not in README
