"""A minimal PEP 517 build backend (standard library only) for multitenancy-client.

It builds a pure-Python wheel of `src/multitenancy_client` (and an editable wheel, PEP 660), so
`pip install ./clients/python` needs no build dependency and no network. Name, version,
description, requires-python and extras come from pyproject.toml's [project] table.
"""
import base64
import hashlib
import os
import re
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "src")
PACKAGE = "multitenancy_client"


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        raw = f.read()
    try:
        import tomllib  # Python 3.11+

        return tomllib.loads(raw.decode())["project"]
    except ImportError:  # Python < 3.11: the few plain keys this file uses
        text = raw.decode()
        project = {k: re.search(r'^%s = "([^"]*)"' % k, text, re.M).group(1) for k in ("name", "version", "description", "requires-python")}
        project["optional-dependencies"] = {}
        return project


def _metadata(project):
    lines = [
        "Metadata-Version: 2.1",
        "Name: " + project["name"],
        "Version: " + project["version"],
        "Summary: " + project.get("description", ""),
        "Requires-Python: " + project.get("requires-python", ">=3"),
    ]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append("Provides-Extra: " + extra)
        for requirement in requirements:
            lines.append('Requires-Dist: %s ; extra == "%s"' % (requirement, extra))
    return "\n".join(lines) + "\n"


def _dist_info(project):
    return "%s-%s.dist-info" % (project["name"].replace("-", "_"), project["version"])


def _wheel_name(project):
    return "%s-%s-py3-none-any.whl" % (project["name"].replace("-", "_"), project["version"])


def _write_wheel(directory, files):
    """files: [(archive path, bytes)]; adds WHEEL, METADATA and RECORD."""
    project = _project()
    info = _dist_info(project)
    files = list(files) + [
        (info + "/METADATA", _metadata(project).encode()),
        (info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: multitenancy-client backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = []
    name = _wheel_name(project)
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files:
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
        record.append(info + "/RECORD,,")
        wheel.writestr(info + "/RECORD", "\n".join(record) + "\n")
    return name


def _sources():
    for folder, dirs, names in os.walk(os.path.join(SOURCE, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    yield os.path.relpath(path, SOURCE).replace(os.sep, "/"), f.read()


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, _sources())


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, [(PACKAGE + "_editable.pth", (SOURCE + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    import tarfile

    project = _project()
    base = "%s-%s" % (project["name"].replace("-", "_"), project["version"])
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for path in ["pyproject.toml", "README.md", "_build/backend.py"]:
            tar.add(os.path.join(ROOT, path), arcname=base + "/" + path)
        for path, _ in _sources():
            tar.add(os.path.join(SOURCE, path), arcname=base + "/src/" + path)
        info = tarfile.TarInfo(base + "/PKG-INFO")
        data = _metadata(project).encode()
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    return name
