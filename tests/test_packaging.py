"""What a user installs: the wheel built from this checkout carries the license, the type hints
marker, the version the command line prints and the store's SQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from raytranscribe import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_license_py_typed_the_version_and_the_sql(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "raytranscribe", source / "raytranscribe", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("raytranscribe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"raytranscribe-{__version__}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "raytranscribe/py.typed" in names
    statements = {f"raytranscribe/store/sql/{p.name}" for p in (ROOT / "raytranscribe" / "store" / "sql").glob("*.sql")}
    assert len(statements) >= 5 and statements <= names  # the store's named statements
    assert f"\nVersion: {__version__}\n" in metadata and "\nLicense: Apache-2.0\n" in metadata
    assert license_text == (ROOT / "LICENSE").read_text()


def test_license_is_the_apache_2_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_changelog_has_a_section_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog\n")
    assert f"\n## [{__version__}] - " in changelog
